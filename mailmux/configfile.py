"""What every mailmux config file shares: reading TOML, and parsing the value types that both the
backend and the gateway use (addresses, durations, the pool secret). Errors name the key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")


class ConfigError(Exception):
    """A configuration file is missing, unreadable or has an invalid key."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def reject_unknown(raw: dict[str, Any], known: set[str], prefix: str = "") -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key")


def parse_address(value: object, key: str) -> tuple[str, int]:
    """'host:port' → (host, port); port 0 asks the OS for a free one (tests use it)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected 'host:port', got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(f"{key}: expected 'host:port' with a port 0-65535, got {value!r}")
    return host, int(port)


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string like '30m', '5s', '250ms'."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
        seconds = float(m.group(1)) * unit
    else:
        raise ConfigError(f"{key}: expected a duration like '30m' or 5.0, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return seconds


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def pool_secret(raw: dict[str, Any], base: Path) -> bytes:
    """`pool_secret`, or the contents of `pool_secret_file`; at least 8 characters."""
    if "pool_secret_file" in raw:
        path = base / str(raw["pool_secret_file"])
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"pool_secret_file: cannot read {path}: {exc.strerror}") from exc
    else:
        value = raw.get("pool_secret")
        if not isinstance(value, str) or not value:
            raise ConfigError("pool_secret: required, expected a non-empty string")
        secret = value.encode()
    if len(secret) < 8:
        raise ConfigError("pool_secret: must be at least 8 characters")
    return secret


def tls_paths(raw: dict[str, Any], base: Path) -> tuple[Path | None, Path | None]:
    cert = base / str(raw["tls_cert"]) if "tls_cert" in raw else None
    key = base / str(raw["tls_key"]) if "tls_key" in raw else None
    if (cert is None) != (key is None):
        raise ConfigError("tls_key: tls_cert and tls_key must be given together")
    return cert, key


def require_tls_off_loopback(listeners: dict[str, tuple[str, int]], tls: bool) -> None:
    """Passwords cross these sockets: never in the clear beyond this machine."""
    for key, (host, _) in listeners.items():
        if not is_loopback(host) and not tls:
            raise ConfigError(
                f"{key}: listening on {host} (off loopback) requires tls_cert/tls_key"
            )
