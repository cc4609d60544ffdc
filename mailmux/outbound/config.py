"""The `[outbound]` table of a backend node's config (README, "Outbound mail").

Part of the node's one frozen config; parsed at start, every error naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmux.configfile import ConfigError, parse_address, parse_duration, reject_unknown

DEFAULT_RETRY = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)  # RFC 5321 4.5.4.1
RELAY_TLS = ("starttls", "tls", "none")

_KNOWN = {
    "enabled", "relay", "relay_tls", "relay_user", "relay_password_file", "relay_ca_file",
    "mx_port", "dns_servers", "helo_name", "retry_intervals", "lifetime", "delay_warning",
    "lease", "poll_interval", "timeout", "max_concurrent", "dkim",
}


@dataclass(frozen=True)
class DkimKey:
    selector: str
    key_file: Path


@dataclass(frozen=True)
class OutboundConfig:
    enabled: bool = True
    relay: tuple[str, int] | None = None  # smarthost; None = direct to the recipients' MX
    relay_tls: str = "starttls"
    relay_user: str | None = None
    relay_password_file: Path | None = None
    relay_ca_file: Path | None = None  # CA bundle for the smarthost's certificate
    mx_port: int = 25
    dns_servers: tuple[tuple[str, int], ...] = ()  # empty: the system's resolver
    helo_name: str | None = None
    retry_intervals: tuple[float, ...] = DEFAULT_RETRY
    lifetime: float = 5 * 86400.0
    delay_warning: float | None = 4 * 3600.0
    lease: float = 10.0
    poll_interval: float = 1.0
    timeout: float = 300.0  # per SMTP command (RFC 5321 4.5.3.2 asks for minutes)
    max_concurrent: int = 20
    dkim: dict[str, DkimKey] = field(default_factory=dict)

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (the last interval repeats)."""
        intervals = self.retry_intervals
        return intervals[min(max(attempts, 1), len(intervals)) - 1]

    def relay_password(self) -> str | None:
        if self.relay_password_file is None:
            return None
        return self.relay_password_file.read_text().strip()


def parse(raw: object, base: Path) -> OutboundConfig:
    if not isinstance(raw, dict):
        raise ConfigError("outbound: expected a table")
    reject_unknown(raw, _KNOWN, "outbound.")
    relay_tls = raw.get("relay_tls", "starttls")
    if relay_tls not in RELAY_TLS:
        raise ConfigError(f"outbound.relay_tls: expected one of {', '.join(RELAY_TLS)}, "
                          f"got {relay_tls!r}")
    if "relay_user" in raw and "relay_password_file" not in raw:
        raise ConfigError("outbound.relay_password_file: required with outbound.relay_user")
    return OutboundConfig(
        enabled=_bool(raw, "enabled", True),
        relay=parse_address(raw["relay"], "outbound.relay") if "relay" in raw else None,
        relay_tls=relay_tls,
        relay_user=_str(raw, "relay_user"),
        relay_password_file=_path(raw, "relay_password_file", base),
        relay_ca_file=_path(raw, "relay_ca_file", base),
        mx_port=_port(raw.get("mx_port", 25)),
        dns_servers=tuple(parse_address(s, "outbound.dns_servers")
                          for s in _list(raw, "dns_servers")),
        helo_name=_str(raw, "helo_name"),
        retry_intervals=_intervals(raw),
        lifetime=parse_duration(raw.get("lifetime", "120h"), "outbound.lifetime"),
        delay_warning=_optional_duration(raw, "delay_warning", "4h"),
        lease=parse_duration(raw.get("lease", 10.0), "outbound.lease"),
        poll_interval=parse_duration(raw.get("poll_interval", 1.0), "outbound.poll_interval"),
        timeout=parse_duration(raw.get("timeout", "5m"), "outbound.timeout"),
        max_concurrent=_positive(raw, "max_concurrent", 20),
        dkim=_dkim(raw.get("dkim", {}), base),
    )


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"outbound.{key}: expected true or false, got {value!r}")
    return value


def _str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"outbound.{key}: expected a non-empty string")
    return value


def _path(raw: dict[str, Any], key: str, base: Path) -> Path | None:
    value = _str(raw, key)
    return None if value is None else base / value


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"outbound.{key}: expected a list")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"outbound.mx_port: expected a port 1-65535, got {value!r}")
    return value


def _positive(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"outbound.{key}: expected a positive integer, got {value!r}")
    return value


def _intervals(raw: dict[str, Any]) -> tuple[float, ...]:
    if "retry_intervals" not in raw:
        return DEFAULT_RETRY
    items = _list(raw, "retry_intervals")
    if not items:
        raise ConfigError("outbound.retry_intervals: expected at least one duration")
    return tuple(parse_duration(v, "outbound.retry_intervals") for v in items)


def _optional_duration(raw: dict[str, Any], key: str, default: str) -> float | None:
    value = raw.get(key, default)
    if value in (False, 0, "0", "off"):
        return None
    return parse_duration(value, f"outbound.{key}")


def _dkim(raw: object, base: Path) -> dict[str, DkimKey]:
    if not isinstance(raw, dict):
        raise ConfigError("outbound.dkim: expected a table of domains")
    keys = {}
    for domain, entry in raw.items():
        prefix = f"outbound.dkim.{domain}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{prefix}: expected a table with selector and key_file")
        reject_unknown(entry, {"selector", "key_file"}, prefix + ".")
        selector, key_file = entry.get("selector"), entry.get("key_file")
        if not isinstance(selector, str) or not selector:
            raise ConfigError(f"{prefix}.selector: required, expected a non-empty string")
        if not isinstance(key_file, str) or not key_file:
            raise ConfigError(f"{prefix}.key_file: required, expected a path")
        keys[domain.lower()] = DkimKey(selector, base / key_file)
    return keys
