"""The gateway's configuration: one frozen dataclass, loaded once from TOML, validated at start."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailmux.backend.config import ConfigError, is_loopback, parse_address, parse_duration

SELECTIONS = ("least-load", "first-responder", "p2c")

_KNOWN = {
    "pool_secret", "pool_secret_file", "listen_imap", "listen_submission", "selection",
    "discovery_timeout", "request_timeout", "pool", "srv_domain", "broadcast", "tls_cert",
    "tls_key", "domains",
}


@dataclass(frozen=True)
class GatewayConfig:
    pool_secret: bytes
    listen_imap: tuple[str, int]
    listen_submission: tuple[str, int]
    pool: tuple[tuple[str, int], ...]
    selection: str = "least-load"
    discovery_timeout: float = 0.5
    request_timeout: float = 5.0
    srv_domain: str | None = None
    broadcast: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


def load(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return from_dict(raw, base=path.parent)


def from_dict(raw: dict[str, Any], base: Path = Path(".")) -> GatewayConfig:
    for key in raw:
        if key not in _KNOWN:
            raise ConfigError(f"{key}: unknown key")
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
    tls_cert = base / raw["tls_cert"] if "tls_cert" in raw else None
    tls_key = base / raw["tls_key"] if "tls_key" in raw else None
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls_key: tls_cert and tls_key must be given together")
    config = GatewayConfig(
        pool_secret=_secret(raw, base),
        listen_imap=parse_address(raw.get("listen_imap", "127.0.0.1:1143"), "listen_imap"),
        listen_submission=parse_address(
            raw.get("listen_submission", "127.0.0.1:1587"), "listen_submission"
        ),
        pool=tuple(parse_address(p, "pool") for p in pool),
        selection=selection,
        discovery_timeout=parse_duration(raw.get("discovery_timeout", 0.5), "discovery_timeout"),
        request_timeout=parse_duration(raw.get("request_timeout", 5.0), "request_timeout"),
        srv_domain=srv_domain,
        broadcast=parse_address(raw["broadcast"], "broadcast") if "broadcast" in raw else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    for key in ("listen_imap", "listen_submission"):
        host, _ = getattr(config, key)
        if not is_loopback(host) and config.tls_cert is None:
            raise ConfigError(f"{key}: listening on {host} (off loopback) requires tls_cert/tls_key")
    return config


def _secret(raw: dict[str, Any], base: Path) -> bytes:
    if "pool_secret_file" in raw:
        path = base / str(raw["pool_secret_file"])
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"pool_secret_file: cannot read {path}: {exc.strerror}") from exc
    else:
        value = raw.get("pool_secret")
        if not isinstance(value, str):
            raise ConfigError("pool_secret: required, expected a string")
        secret = value.encode()
    if len(secret) < 8:
        raise ConfigError("pool_secret: must be at least 8 characters")
    return secret
