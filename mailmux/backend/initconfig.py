"""`mailmux-backend init`: a first config for a node, with a fresh pool secret and private files.

The config it writes is loopback-only (no TLS needed) and valid as written: the administrator
then opens listeners to the network, adds peers and certificates (docs/deploy.md). The pool
secret goes to its own file (`pool_secret_file`), so the config can be shown or versioned
without it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mailmux.backend.config import load
from mailmux.configfile import ConfigError
from mailmux.privatefiles import make_private_dir, require_private, write_private

SECRET_BYTES = 32


class InitError(Exception):
    """The node cannot be initialised as asked (a file exists, a name is invalid)."""


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    secret_path: Path
    secret_created: bool


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(node_id: str, data_dir: Path, domains: list[str], secret_path: Path) -> str:
    return "\n".join([
        "# mailmux backend node (written by mailmux-backend init); keys: README,",
        "# 'Backend configuration reference'; going to production: docs/deploy.md.",
        f"node_id = {_toml_string(node_id)}",
        f"data_dir = {_toml_string(str(data_dir))}",
        f"domains = [{', '.join(_toml_string(d) for d in domains)}]",
        f"pool_secret_file = {_toml_string(str(secret_path))}",
        'listen_imap = "127.0.0.1:14301"',
        'listen_smtp = "127.0.0.1:12501"',
        'listen_lmtp = "127.0.0.1:12401"',
        'listen_control = "127.0.0.1:14401"',
        '# metrics_listen = "127.0.0.1:9101"',
        "# Off loopback, every listener needs TLS:",
        '# tls_cert = "/etc/mailmux/tls/fullchain.pem"',
        '# tls_key = "/etc/mailmux/tls/privkey.pem"',
        "",
        "[replication]",
        'listen = "127.0.0.1:14501"',
        '# peers = ["b=192.0.2.12:14500", "c=192.0.2.13:14500"]',
        'mode = "immediate"',
        "",
    ])


def init_node(data_dir: Path, node_id: str, domains: list[str], config_path: Path | None,
              secret_path: Path | None, force: bool = False) -> InitResult:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", node_id):
        raise InitError(f"--node-id: use letters, digits, '.', '_' or '-', got {node_id!r}")
    data_dir = data_dir.absolute()
    config_path = (config_path or data_dir / "node.toml").absolute()
    secret_path = (secret_path or config_path.parent / "pool.key").absolute()
    if config_path.exists() and not force:
        raise InitError(f"{config_path} exists; use --force to overwrite it")
    make_private_dir(data_dir)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    created = not secret_path.exists()
    if created:
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(secret_path, secrets.token_urlsafe(SECRET_BYTES) + "\n")
    else:
        require_private(secret_path, "pool secret file")  # shared from the first node
    write_private(config_path, config_text(node_id, data_dir, domains, secret_path))
    try:
        load(config_path)
    except ConfigError as exc:  # e.g. a bad domain: say so now, not at the first start
        config_path.unlink()
        raise InitError(f"config error: {exc}") from exc
    return InitResult(config_path, secret_path, created)
