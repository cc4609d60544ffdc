"""The backend node's configuration: one frozen dataclass, loaded once from TOML.

Validation happens here, at start, and every error names the offending key so that an
administrator can fix the file without reading code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmux.backend.message.parsed import MAX_DEPTH
from mailmux.configfile import (
    ConfigError,
    parse_address,
    parse_duration,
    pool_secret,
    read_toml,
    reject_unknown,
    require_tls_off_loopback,
    tls_paths,
)
from mailmux.metrics import parse_metrics_listen
from mailmux.outbound.config import OutboundConfig
from mailmux.outbound.config import parse as parse_outbound

__all__ = ["BackendConfig", "ConfigError", "CopiesConfig", "ReplicationConfig", "from_dict", "load"]

_WINDOW = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


@dataclass(frozen=True)
class CopiesConfig:
    high: int | None = None  # None = all live replicas
    normal: int = 2
    bulk: int = 1


@dataclass(frozen=True)
class ReplicationConfig:
    listen: tuple[str, int] | None = None
    peers: tuple[tuple[str, str, int], ...] = ()  # (node id, host, port)
    mode: str = "immediate"
    batch_window: tuple[int, int] | None = None  # minutes after midnight (start, end)
    batch_backlog: int = 10_000
    copies: CopiesConfig = field(default_factory=CopiesConfig)
    copy_timeout: float = 5.0
    # A sync point (NOOP, CHECK, SELECT...) on a node that is not the user's home waits at most
    # this long to hold what a majority holds (replication/barrier.py).
    read_barrier: float = 2.0
    degrade: bool = False  # accept with fewer copies than asked when peers are down
    # A user's home lease: takeover after the home dies takes about this long (the goal is
    # 2 s with the new node's login and commit); renewals come every ~lease/3.
    lease: float = 1.4
    lease_margin: float = 0.15  # the holder stops this much early (clock drift, scheduling)


@dataclass(frozen=True)
class BackendConfig:
    node_id: str
    data_dir: Path
    domains: tuple[str, ...]
    pool_secret: bytes
    listen_imap: tuple[str, int]
    listen_smtp: tuple[str, int]
    listen_control: tuple[str, int]
    listen_lmtp: tuple[str, int] | None = None
    listen_imaps: tuple[str, int] | None = None  # implicit TLS (RFC 8314); needs tls_cert
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_size: int = 50 * 1024 * 1024
    max_line_length: int = 64 * 1024
    idle_timeout: float = 30 * 60.0
    login_timeout: float = 60.0
    max_unauthenticated: int = 100
    max_gateway_links: int = 1000  # links pool gateways proved theirs, not yet logged in
    lockout_failures: int = 10  # failed logins for one user, pool-wide, before a lockout
    lockout_time: float = 30.0  # a locked user's logins are refused this long after a failure
    max_failed_logins: int = 5
    failed_login_delay: float = 1.0
    auth_cache_ttl: float = 60.0  # seconds a verified login is remembered; 0: never
    max_command_size: int = 50 * 1024 * 1024 + 128 * 1024  # one command's lines and literals
    max_mime_parts: int = 1000
    # Who may hand mail to the SMTP/LMTP intake (None: anybody, an MX port)
    intake_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    max_mime_depth: int = 16
    command_cpu_budget: float = 5.0  # user-controlled work per command (LIST patterns, SEARCH)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    pool_secret_file: Path | None = None  # where pool_secret came from, for its permission check
    metrics_listen: tuple[str, int] | None = None  # Prometheus /metrics endpoint
    boards_autosubscribe: bool = True  # every user is subscribed to every board
    replay_keep: float = 7 * 24 * 3600.0  # seconds a replay id is remembered
    replay_max: int = 1_000_000  # replay ids (and runs) kept at most, the newest
    expunged_keep: float = 30 * 24 * 3600.0  # seconds the QRESYNC expunge history reaches back
    expunged_max: int = 100_000  # expunges remembered per mailbox at most, the newest

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mailmux.sqlite3"

    def serves_domain(self, address: str) -> bool:
        _, _, domain = address.rpartition("@")
        return domain.lower() in self.domains


def load(path: str | Path) -> BackendConfig:
    path = Path(path)
    return from_dict(read_toml(path), base=path.parent)


_KNOWN = {
    "node_id", "data_dir", "domains", "pool_secret", "pool_secret_file", "listen_imap",
    "listen_smtp", "listen_lmtp", "listen_imaps", "listen_control", "tls_cert", "tls_key",
    "max_message_size", "max_line_length", "idle_timeout", "login_timeout", "max_unauthenticated",
    "max_gateway_links", "lockout_failures", "lockout_time",
    "max_failed_logins", "failed_login_delay", "auth_cache_ttl", "replication",
    "command_cpu_budget", "max_command_size", "max_mime_parts", "max_mime_depth",
    "intake_networks", "outbound",
    "metrics_listen", "boards_autosubscribe", "replay_keep", "replay_max",
    "expunged_keep", "expunged_max",
}
_KNOWN_REPLICATION = {
    "listen", "peers", "mode", "batch_window", "batch_backlog", "copies", "copy_timeout",
    "degrade", "lease", "lease_margin",
    "read_barrier",
}


def from_dict(raw: dict[str, Any], base: Path = Path(".")) -> BackendConfig:
    reject_unknown(raw, _KNOWN)
    node_id = _required_str(raw, "node_id")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", node_id):
        raise ConfigError(f"node_id: use letters, digits, '.', '_' or '-', got {node_id!r}")
    domains = raw.get("domains")
    if not isinstance(domains, list) or not domains or not all(
        isinstance(d, str) and "." in d for d in domains
    ):
        raise ConfigError("domains: expected a non-empty list of domain names")
    tls_cert, tls_key = tls_paths(raw, base)
    config = BackendConfig(
        node_id=node_id,
        data_dir=base / _required_str(raw, "data_dir"),
        domains=tuple(d.lower() for d in domains),
        pool_secret=pool_secret(raw, base),
        listen_imap=parse_address(raw.get("listen_imap"), "listen_imap"),
        listen_smtp=parse_address(raw.get("listen_smtp"), "listen_smtp"),
        listen_control=parse_address(raw.get("listen_control"), "listen_control"),
        listen_lmtp=(
            parse_address(raw["listen_lmtp"], "listen_lmtp") if "listen_lmtp" in raw else None
        ),
        listen_imaps=(
            parse_address(raw["listen_imaps"], "listen_imaps") if "listen_imaps" in raw else None
        ),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_message_size=_positive_int(raw, "max_message_size", 50 * 1024 * 1024),
        max_line_length=_positive_int(raw, "max_line_length", 64 * 1024),
        idle_timeout=parse_duration(raw.get("idle_timeout", 1800), "idle_timeout"),
        login_timeout=parse_duration(raw.get("login_timeout", 60), "login_timeout"),
        max_unauthenticated=_positive_int(raw, "max_unauthenticated", 100),
        max_gateway_links=_positive_int(raw, "max_gateway_links", 1000),
        lockout_failures=_positive_int(raw, "lockout_failures", 10),
        lockout_time=parse_duration(raw.get("lockout_time", 30.0), "lockout_time"),
        max_failed_logins=_positive_int(raw, "max_failed_logins", 5),
        auth_cache_ttl=parse_duration(raw.get("auth_cache_ttl", 60.0), "auth_cache_ttl"),
        failed_login_delay=parse_duration(
            raw.get("failed_login_delay", 1.0), "failed_login_delay"
        ),
        max_command_size=_positive_int(
            raw, "max_command_size",
            _positive_int(raw, "max_message_size", 50 * 1024 * 1024)
            + _positive_int(raw, "max_line_length", 64 * 1024) * 2),
        max_mime_parts=_positive_int(raw, "max_mime_parts", 1000),
        intake_networks=_networks(raw),
        max_mime_depth=_mime_depth(raw),
        command_cpu_budget=parse_duration(raw.get("command_cpu_budget", 5.0),
                                          "command_cpu_budget"),
        replication=_replication(raw.get("replication", {})),
        outbound=parse_outbound(raw.get("outbound", {}), base),
        pool_secret_file=(
            base / str(raw["pool_secret_file"]) if "pool_secret_file" in raw else None
        ),
        metrics_listen=parse_metrics_listen(raw.get("metrics_listen")),
        boards_autosubscribe=_bool(raw, "boards_autosubscribe", True),
        replay_keep=parse_duration(raw.get("replay_keep", 7 * 24 * 3600.0), "replay_keep"),
        replay_max=_positive_int(raw, "replay_max", 1_000_000),
        expunged_keep=parse_duration(raw.get("expunged_keep", 30 * 24 * 3600.0),
                                     "expunged_keep"),
        expunged_max=_positive_int(raw, "expunged_max", 100_000),
    )
    listeners = {k: getattr(config, k) for k in ("listen_imap", "listen_smtp", "listen_control")}
    require_tls_off_loopback(listeners, config.tls_enabled)
    if config.listen_imaps is not None and not config.tls_enabled:
        raise ConfigError("listen_imaps: implicit TLS needs tls_cert and tls_key")
    return config


def _networks(
    raw: dict[str, Any],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    value = raw.get("intake_networks")
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError("intake_networks: expected a list of networks like '127.0.0.0/8'")
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in value)
    except ValueError as exc:
        raise ConfigError(f"intake_networks: {exc}") from None


def _mime_depth(raw: dict[str, Any]) -> int:
    depth = _positive_int(raw, "max_mime_depth", 16)
    if depth > MAX_DEPTH:
        raise ConfigError(f"max_mime_depth: at most {MAX_DEPTH}, got {depth}")
    return depth


def _required_str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: required, expected a non-empty string")
    return value


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _positive_int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


def _replication(raw: object) -> ReplicationConfig:
    if not isinstance(raw, dict):
        raise ConfigError("replication: expected a table")
    reject_unknown(raw, _KNOWN_REPLICATION, "replication.")
    listen = (
        parse_address(raw["listen"], "replication.listen") if "listen" in raw else None
    )
    peers = []
    for item in raw.get("peers", []):
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"replication.peers: expected 'id=host:port', got {item!r}")
        peer_id, _, address = item.partition("=")
        peers.append((peer_id, *parse_address(address, "replication.peers")))
    mode = raw.get("mode", "immediate")
    if mode not in ("immediate", "batch"):
        raise ConfigError(f"replication.mode: expected 'immediate' or 'batch', got {mode!r}")
    window = None
    if "batch_window" in raw:
        m = _WINDOW.match(str(raw["batch_window"]))
        if not m:
            raise ConfigError("replication.batch_window: expected 'HH:MM-HH:MM'")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ConfigError("replication.batch_window: hours 00-23, minutes 00-59")
        window = (h1 * 60 + m1, h2 * 60 + m2)
    return ReplicationConfig(
        listen=listen,
        peers=tuple(peers),
        mode=mode,
        batch_window=window,
        batch_backlog=_positive_int(raw, "batch_backlog", 10_000),
        copies=_copies(raw.get("copies", {})),
        copy_timeout=parse_duration(raw.get("copy_timeout", 5.0), "replication.copy_timeout"),
        read_barrier=parse_duration(raw.get("read_barrier", 2.0), "replication.read_barrier"),
        degrade=bool(raw.get("degrade", False)),
        **_lease(raw),
    )


def _lease(raw: dict[str, object]) -> dict[str, float]:
    lease = parse_duration(raw.get("lease", 1.4), "replication.lease")
    margin = parse_duration(raw.get("lease_margin", 0.15), "replication.lease_margin")
    if lease <= 0:
        raise ConfigError("replication.lease: must be positive")
    if not 0 <= margin < lease / 2:
        raise ConfigError("replication.lease_margin: must be below half the lease")
    return {"lease": lease, "lease_margin": margin}


def _copies(raw: object) -> CopiesConfig:
    if not isinstance(raw, dict):
        raise ConfigError("replication.copies: expected a table")
    values: dict[str, int | None] = {}
    for level, default in (("high", None), ("normal", 2), ("bulk", 1)):
        value = raw.get(level, "all" if default is None else default)
        if value == "all":
            values[level] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            values[level] = value
        else:
            raise ConfigError(f"replication.copies.{level}: expected 'all' or an integer >= 1")
    return CopiesConfig(
        high=values["high"], normal=values["normal"] or 2, bulk=values["bulk"] or 1
    )
