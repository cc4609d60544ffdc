"""The gateway's configuration: one frozen dataclass, loaded once from TOML, validated at start."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailmux.configfile import (
    ConfigError,
    parse_address,
    parse_duration,
    read_toml,
    reject_unknown,
    require_tls_off_loopback,
    tls_paths,
)
from mailmux.metrics import parse_metrics_listen
from mailmux.protocol.control.keys import GatewayKey, GatewayKeyError, parse_key

SELECTIONS = ("least-load", "first-responder", "p2c")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")

_KNOWN = {
    "gateway_key", "gateway_key_file", "listen_imap", "listen_submission", "selection",
    "discovery_timeout", "request_timeout", "pool", "srv_domain", "broadcast", "tls_cert",
    "tls_key", "discovery_cache_ttl", "dns_server", "domains", "max_line_length",
    "max_message_size", "hang_timeout", "catchup_timeout", "metrics_listen",
    "login_timeout", "max_connections", "max_connections_per_ip", "max_unauthenticated",
    "failed_login_delay", "sender_policy", "max_recipients", "event_loop",
}


@dataclass(frozen=True)
class GatewayConfig:
    gateway_key: GatewayKey  # never the pool secret: that stays on the servers
    listen_imap: tuple[str, int]
    listen_submission: tuple[str, int]
    pool: tuple[tuple[str, int], ...]
    selection: str = "least-load"
    discovery_timeout: float = 0.5
    discovery_cache_ttl: float = 2.0  # reuse a user's discovery answers this long; 0: never
    request_timeout: float = 5.0
    srv_domain: str | None = None
    broadcast: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    dns_server: tuple[str, int] | None = None  # SRV lookups go here instead of resolv.conf
    domains: tuple[str, ...] = ()  # pool domains; empty: the domain of the logged-in user
    max_line_length: int = 64 * 1024
    max_message_size: int = 50 * 1024 * 1024
    login_timeout: float = 60.0  # a client not logged in by then is disconnected
    max_connections: int = 400  # IMAP and submission each; stays below the usual fd limit
    max_connections_per_ip: int = 400
    max_unauthenticated: int = 64
    failed_login_delay: float = 1.0  # every failed login is answered after this, doubling
    sender_policy: str = "strict"  # From: must be the user; "add-sender": add Sender: instead
    max_recipients: int = 100
    hang_timeout: float = 1.0  # a node silent this long (heartbeats and data) is hung
    catchup_timeout: float = 2.0  # how long a new node may take to reach the client's view
    metrics_listen: tuple[str, int] | None = None  # Prometheus /metrics endpoint
    event_loop: str = "auto"  # uvloop when installed (a dependency), else asyncio's own loop


def load(path: str | Path) -> GatewayConfig:
    path = Path(path)
    return from_dict(read_toml(path), base=path.parent)


def from_dict(raw: dict[str, Any], base: Path = Path(".")) -> GatewayConfig:
    for key in ("pool_secret", "pool_secret_file"):
        if key in raw:
            raise ConfigError(
                f"{key}: a gateway holds a gateway key, never the pool secret; issue one on a "
                "node with `mailmux-backend gateway-key add NAME` and set gateway_key_file")
    reject_unknown(raw, _KNOWN)
    selection = raw.get("selection", "least-load")
    if selection not in SELECTIONS:
        raise ConfigError(f"selection: expected one of {', '.join(SELECTIONS)}, got {selection!r}")
    pool = raw.get("pool", [])
    if not isinstance(pool, list):
        raise ConfigError("pool: expected a list of 'host:port' control addresses")
    srv_domain = raw.get("srv_domain")
    if srv_domain is not None and not isinstance(srv_domain, str):
        raise ConfigError("srv_domain: expected a domain name")
    if not pool and srv_domain is None and "broadcast" not in raw:
        raise ConfigError("pool: give control addresses, srv_domain or broadcast")
    tls_cert, tls_key = tls_paths(raw, base)
    domains = raw.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) and d for d in domains):
        raise ConfigError("domains: expected a list of domain names")
    config = GatewayConfig(
        gateway_key=gateway_key(raw, base),
        listen_imap=parse_address(raw.get("listen_imap", "127.0.0.1:1143"), "listen_imap"),
        listen_submission=parse_address(
            raw.get("listen_submission", "127.0.0.1:1587"), "listen_submission"
        ),
        pool=tuple(parse_address(p, "pool") for p in pool),
        selection=selection,
        discovery_timeout=parse_duration(raw.get("discovery_timeout", 0.5), "discovery_timeout"),
        discovery_cache_ttl=parse_duration(raw.get("discovery_cache_ttl", 2.0),
                                           "discovery_cache_ttl"),
        request_timeout=parse_duration(raw.get("request_timeout", 5.0), "request_timeout"),
        srv_domain=srv_domain,
        broadcast=parse_address(raw["broadcast"], "broadcast") if "broadcast" in raw else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        dns_server=(
            parse_address(raw["dns_server"], "dns_server") if "dns_server" in raw else None
        ),
        domains=tuple(d.lower() for d in domains),
        max_line_length=_positive_int(raw, "max_line_length", 64 * 1024),
        max_message_size=_positive_int(raw, "max_message_size", 50 * 1024 * 1024),
        login_timeout=parse_duration(raw.get("login_timeout", 60), "login_timeout"),
        max_connections=_positive_int(raw, "max_connections", 400),
        max_connections_per_ip=_positive_int(raw, "max_connections_per_ip", 400),
        max_unauthenticated=_positive_int(raw, "max_unauthenticated", 64),
        failed_login_delay=parse_duration(raw.get("failed_login_delay", 1.0),
                                          "failed_login_delay"),
        sender_policy=_sender_policy(raw),
        max_recipients=_positive_int(raw, "max_recipients", 100),
        hang_timeout=parse_duration(raw.get("hang_timeout", 1.0), "hang_timeout"),
        catchup_timeout=parse_duration(raw.get("catchup_timeout", 2.0), "catchup_timeout"),
        metrics_listen=parse_metrics_listen(raw.get("metrics_listen")),
        event_loop=_event_loop(raw),
    )
    listeners = {k: getattr(config, k) for k in ("listen_imap", "listen_submission")}
    require_tls_off_loopback(listeners, config.tls_cert is not None)
    return config


def gateway_key(raw: dict[str, Any], base: Path) -> GatewayKey:
    """`gateway_key_file` (a file holding NAME:SECRET), or `gateway_key` given inline."""
    if "gateway_key_file" in raw:
        path = base / str(raw["gateway_key_file"])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"gateway_key_file: cannot read {path}: {exc}") from exc
        where = "gateway_key_file"
    elif isinstance(raw.get("gateway_key"), str):
        text, where = str(raw["gateway_key"]), "gateway_key"
    else:
        raise ConfigError("gateway_key_file: required (the file `mailmux-backend gateway-key "
                          "add NAME` wrote)")
    try:
        return parse_key(text)
    except GatewayKeyError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _sender_policy(raw: dict[str, Any]) -> str:
    policy = raw.get("sender_policy", "strict")
    if policy not in ("strict", "add-sender"):
        raise ConfigError(f"sender_policy: expected 'strict' or 'add-sender', got {policy!r}")
    return str(policy)


def _event_loop(raw: dict[str, Any]) -> str:
    loop = raw.get("event_loop", "auto")
    if loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop: expected one of {', '.join(EVENT_LOOPS)}, got {loop!r}")
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("event_loop: 'uvloop' is not installed "
                          "(it is one of mailmux's dependencies)")
    return str(loop)


def _positive_int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value
