"""`mailmux-backend gateway-key add|list|revoke`: the credentials gateways hold instead of the
pool secret (see protocol/control/keys.py).

`add NAME` makes a random key, stores it (a change record: every node of the pool learns it)
and writes `NAME:SECRET` to a key file readable by its owner alone, for the gateway's
`gateway_key_file`. With an existing key file it registers that key instead (e.g. one gateway
key for several pools). `revoke NAME` is final and replicated too: within seconds of the record
reaching a node, that node refuses the key. The commands open the node's store directly (safe
while the node runs: WAL, one writer at a time).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from mailmux.backend.config import ConfigError, load
from mailmux.backend.errors import BackendError
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.privatefiles import NotPrivateError, make_private_dir, require_private, write_private
from mailmux.protocol.control.keys import GatewayKey, GatewayKeyError, check_name, parse_key

T = TypeVar("T")
SECRET_BYTES = 32

config_option = click.option("--config", "config_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="the node's TOML config file")


def _with_store(path: Path, action: Callable[[SqliteStore], Awaitable[T]]) -> T:
    try:
        config = load(path)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from exc

    async def run() -> T:
        os.umask(0o077)
        if not config.data_dir.exists():
            make_private_dir(config.data_dir)
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            return await action(store)

    try:
        return asyncio.run(run())
    except BackendError as exc:
        raise click.ClickException(exc.message) from exc


@click.group("gateway-key")
def gateway_key() -> None:
    """Keys for gateways (which never hold the pool secret)."""


def _key_for(name: str, key_file: Path) -> tuple[GatewayKey, bool]:
    """The key in `key_file` if it exists (it must be NAME's and private), else a new one."""
    if key_file.exists():
        try:
            require_private(key_file, "gateway key file")
            key = parse_key(key_file.read_text())
        except (NotPrivateError, GatewayKeyError, OSError) as exc:
            raise click.ClickException(f"{key_file}: {exc}") from exc
        if key.name != name:
            raise click.ClickException(f"{key_file} holds key {key.name!r}, not {name!r}")
        return key, False
    return GatewayKey(name, secrets.token_urlsafe(SECRET_BYTES).encode()), True


@gateway_key.command("add")
@click.argument("name")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="where to write NAME:SECRET (default ./NAME.gateway-key); an existing "
                   "file's key is registered instead")
@config_option
def add(name: str, key_file: Path | None, config_path: Path) -> None:
    """Issue a key for gateway NAME (replicated to every node)."""
    try:
        check_name(name)
    except GatewayKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    path = key_file or Path(f"{name}.gateway-key")
    key, created = _key_for(name, path)
    _with_store(config_path, lambda store: store.add_gateway_key(name, key.secret.decode()))
    if created:
        write_private(path, key.line() + "\n")
    click.echo(f"gateway key {name} added; give {path} (mode 0600) to that gateway only "
               "and name it in its gateway_key_file")


@gateway_key.command("list")
@config_option
def list_keys(config_path: Path) -> None:
    """Gateway keys, one a line: name, issued, and revoked if so."""
    for info in _with_store(config_path, lambda store: store.gateway_keys()):
        issued = datetime.fromtimestamp(info.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state = "active" if info.revoked is None else "revoked " + datetime.fromtimestamp(
            info.revoked, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"{info.name}\t{issued}\t{state}")


@gateway_key.command("revoke")
@click.argument("name")
@config_option
def revoke(name: str, config_path: Path) -> None:
    """Revoke gateway key NAME for good, on every node of the pool."""
    _with_store(config_path, lambda store: store.revoke_gateway_key(name))
    click.echo(f"gateway key {name} revoked")
