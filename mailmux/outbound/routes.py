"""Where a recipient's mail goes: the smarthost, or the recipient domain's MX hosts.

Direct delivery follows RFC 5321 section 5.1: MX records by preference (equal preferences in
random order would spread load; we keep DNS order for reproducibility), each host's A and AAAA
addresses; with no MX record the domain's own address records are the implicit MX. A domain
that does not exist, or publishes a null MX (RFC 7505), fails permanently; a resolver that does
not answer is a temporary failure, retried like a busy server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailmux.outbound.config import OutboundConfig

RESOLVE_LIFETIME = 15.0


class RouteError(Exception):
    """No host to try: `permanent` failures bounce, the others are retried."""

    def __init__(self, reply: str, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


@dataclass(frozen=True)
class Host:
    name: str  # for TLS server name checks and DSNs
    address: str
    port: int


@dataclass(frozen=True)
class Route:
    hosts: tuple[Host, ...]
    tls: str  # "starttls" / "tls" / "none" (smarthost, enforced) or "opportunistic" (MX)
    verify: bool


def destination(config: OutboundConfig, recipient: str) -> str:
    """The key recipients are grouped by: one connection per destination."""
    return "relay" if config.relay is not None else recipient.rpartition("@")[2].lower()


class Router:
    def __init__(self, config: OutboundConfig) -> None:
        self.config = config
        self.resolver = dns.asyncresolver.Resolver(configure=not config.dns_servers)
        if config.dns_servers:
            self.resolver.nameservers = [host for host, _ in config.dns_servers]
            self.resolver.port = config.dns_servers[0][1]
        self.resolver.lifetime = RESOLVE_LIFETIME

    async def route(self, key: str) -> Route:
        if self.config.relay is not None:
            host, port = self.config.relay
            return Route((Host(host, host, port),), self.config.relay_tls, verify=True)
        return Route(tuple(await self._mx_hosts(key)), "opportunistic", verify=False)

    async def _mx_hosts(self, domain: str) -> list[Host]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
            exchanges = sorted(((r.preference, r.exchange.to_text(omit_final_dot=True))
                                for r in answer), key=lambda item: item[0])
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"550 5.1.2 domain {domain} does not exist", True) from None
        except dns.resolver.NoAnswer:
            exchanges = [(0, domain)]  # implicit MX (RFC 5321 5.1)
        except dns.exception.DNSException as exc:
            raise RouteError(f"451 4.4.3 DNS lookup of {domain} failed: {exc}", False) from None
        if len(exchanges) == 1 and exchanges[0][1] in ("", "."):
            raise RouteError(f"556 5.1.10 {domain} accepts no mail (null MX)", True)
        hosts = []
        for _, name in exchanges:
            hosts += [Host(name, a, self.config.mx_port) for a in await self._addresses(name)]
        if not hosts:
            raise RouteError(f"451 4.4.4 no address for any mail host of {domain}", False)
        return hosts

    async def _addresses(self, name: str) -> Sequence[str]:
        found: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in await self.resolver.resolve(name, kind)]
            except dns.exception.DNSException:
                continue  # one family missing is normal; no address at all is decided above
        return found
