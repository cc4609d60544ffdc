"""`mailmux-backend`: run a node, and manage its users and boards.

The user and board commands open the node's SQLite store directly; that is safe while the node
runs (WAL mode, one writer at a time). Passwords are read from stdin (one line) or, on a
terminal, prompted for without echo; they are never printed or logged.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mailmux.backend import gatewaykey_cli
from mailmux.backend.config import BackendConfig, ConfigError, load
from mailmux.backend.errors import BackendError
from mailmux.backend.store.interface import BOARD_PREFIX, MailStore
from mailmux.backend.store.names import board_name
from mailmux.logsetup import LOG_FORMATS, setup_logging
from mailmux.outbound import cli as outbound_cli
from mailmux.privatefiles import NotPrivateError, make_private_dir, open_to_others, require_private

if TYPE_CHECKING:
    from mailmux.backend.store.sqlite import SqliteStore

log = logging.getLogger("mailmux.backend")

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_CONFIG = 2
# What a start or a store command can meet that is the environment's fault, not a bug: a port in
# use, a data_dir we may not write, a database we cannot open. Reported in one line.
ENVIRONMENT_ERRORS = (OSError, sqlite3.Error)

config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the node's TOML config file",
)


@click.group()
def main() -> None:
    """mailmux backend node."""


# run --------------------------------------------------------------------------------------


log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
    help="log lines on stderr as text or as one JSON object each",
)


@main.command()
@config_option
@log_format_option
def run(config_path: Path, log_format: str) -> None:
    """Run the node until SIGTERM or SIGINT; prints one JSON line when ready."""
    config = _load_config(config_path)
    setup_logging(config.node_id, log_format)
    _require_private_files(config, config_path)
    try:
        asyncio.run(_serve(config))
    except (*ENVIRONMENT_ERRORS, BackendError) as exc:
        log.error("cannot run node %s: %s", config.node_id, exc)
        _fail(f"error: {exc}")


async def _serve(config: BackendConfig) -> None:
    from mailmux.backend.node import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config) as node:
        click.echo(json.dumps(node.ready))
        sys.stdout.flush()
        await stop.wait()


def _require_private_files(config: BackendConfig, config_path: Path) -> None:
    """Mail, password hashes and the pool secret are for the service's user alone."""
    # Whatever the node creates from now on (database, WAL, ready.json) is private too.
    os.umask(0o077)
    try:
        if not config.data_dir.exists():
            make_private_dir(config.data_dir)
        require_private(config.data_dir, "data_dir")
        if config.pool_secret_file is not None:
            require_private(config.pool_secret_file, "pool_secret_file")
    except NotPrivateError as exc:
        log.error("refusing to start node %s: %s", config.node_id, exc)
        _fail(f"error: {exc}")
    except OSError as exc:
        _fail(f"error: {exc}")
    if config.pool_secret_file is None and open_to_others(config_path) is not None:
        log.warning("%s holds pool_secret and is readable by others: chmod 600 it, or move "
                    "the secret to pool_secret_file", config_path)


# setting up -------------------------------------------------------------------------------


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the node's data directory (created with mode 0700)")
@click.option("--node-id", default="a", show_default=True, help="this node's id in the pool")
@click.option("--domain", "domains", multiple=True, default=["example.test"], show_default=True,
              help="a mail domain the pool serves (repeat for more)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="where to write the config [default: DATA_DIR/node.toml]")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the pool secret file; reused if it exists (the pool's other nodes) "
                   "[default: pool.key beside the config]")
@click.option("--force", is_flag=True, help="overwrite an existing config")
def init(data_dir: Path, node_id: str, domains: tuple[str, ...], config_path: Path | None,
         secret_file: Path | None, force: bool) -> None:
    """Write a first config for a node, with a fresh random pool secret and private files."""
    from mailmux.backend.initconfig import InitError, init_node

    try:
        result = init_node(data_dir, node_id, list(domains), config_path, secret_file, force)
    except (InitError, NotPrivateError) as exc:
        _fail(f"error: {exc}")
    except OSError as exc:
        _fail(f"error: {exc}")
    what = "new random pool secret" if result.secret_created else "existing pool secret"
    click.echo(f"wrote {result.config_path} (mode 0600)")
    click.echo(f"{what} in {result.secret_path} (mode 0600): copy it to the pool's other nodes")
    click.echo(f"next: mailmux-backend run --config {result.config_path}")


@main.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a node's config (and its files' permissions); exit 2 naming the bad key."""
    config = _load_config(config_path)
    problems = []
    checked = ((config.data_dir, "data_dir"), (config.pool_secret_file, "pool_secret_file"))
    for path, what in checked:
        if path is None or not path.exists():
            continue
        try:
            require_private(path, what)
        except NotPrivateError as exc:
            problems.append(str(exc))
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"config OK: {config_path} (node {config.node_id})")


# users ------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage users (ids are e-mail addresses in the node's domains)."""


@user.command("add")
@click.argument("name")
@config_option
def user_add(name: str, config_path: Path) -> None:
    """Add user NAME; the password is read from stdin (one line)."""
    password = _read_password()
    config = _load_config(config_path)
    _with_store(config_path, lambda store: _add_user(store, config, name, password))
    click.echo(f"added user {name}")


@user.command("passwd")
@click.argument("name")
@config_option
def user_passwd(name: str, config_path: Path) -> None:
    """Set the password of user NAME, read from stdin (one line)."""
    password = _read_password()
    _with_store(config_path, lambda store: store.set_password(name, password))
    click.echo(f"password of {name} changed")


@user.command("del")
@click.argument("name")
@config_option
def user_del(name: str, config_path: Path) -> None:
    """Delete user NAME and their mailboxes."""
    _with_store(config_path, lambda store: store.delete_user(name))
    click.echo(f"deleted user {name}")


@user.command("list")
@config_option
def user_list(config_path: Path) -> None:
    """List users, one a line."""
    for name in _with_store(config_path, lambda store: store.list_users()):
        click.echo(name)


# boards -----------------------------------------------------------------------------------


@main.group()
def board() -> None:
    """Manage boards (shared folders; post to board+NAME@DOMAIN)."""


@board.command("add")
@click.argument("name")
@config_option
def board_add(name: str, config_path: Path) -> None:
    """Add board NAME."""
    config = _load_config(config_path)
    _with_store(config_path, lambda store: _add_board(store, config, name))
    click.echo(f"added board {name}")


async def _add_user(store: MailStore, config: BackendConfig, name: str, password: str) -> None:
    await store.add_user(name, password)
    if config.boards_autosubscribe:
        # So that clients that show subscribed folders only (Thunderbird) show the boards.
        for board in await store.list_boards():
            await store.set_subscribed(name.lower(), BOARD_PREFIX + board, True)


async def _add_board(store: MailStore, config: BackendConfig, name: str) -> None:
    await store.add_board(name)
    if config.boards_autosubscribe:
        for user_name in await store.list_users():
            await store.set_subscribed(user_name, BOARD_PREFIX + board_name(name), True)


@board.command("list")
@config_option
def board_list(config_path: Path) -> None:
    """List boards, one a line."""
    for name in _with_store(config_path, lambda store: store.list_boards()):
        click.echo(name)


@board.group("moderator")
def moderator() -> None:
    """Board moderators: who may set \\Deleted on a board's posts and expunge them."""


@moderator.command("add")
@click.argument("board_name")
@click.argument("user_name")
@config_option
def moderator_add(board_name: str, user_name: str, config_path: Path) -> None:
    """Make USER_NAME a moderator of board BOARD_NAME (replicated to every node)."""
    _with_store(config_path, lambda store: _moderators(store).set_moderator(
        board_name, user_name, True))
    click.echo(f"{user_name} moderates board {board_name}")


@moderator.command("remove")
@click.argument("board_name")
@click.argument("user_name")
@config_option
def moderator_remove(board_name: str, user_name: str, config_path: Path) -> None:
    """Withdraw USER_NAME's moderation of board BOARD_NAME."""
    _with_store(config_path, lambda store: _moderators(store).set_moderator(
        board_name, user_name, False))
    click.echo(f"{user_name} no longer moderates board {board_name}")


@moderator.command("list")
@click.argument("board_name")
@config_option
def moderator_list(board_name: str, config_path: Path) -> None:
    """The moderators of board BOARD_NAME, one a line."""
    for name in _with_store(config_path, lambda store: _moderators(store).moderators(
            board_name)):
        click.echo(name)


def _moderators(store: MailStore) -> SqliteStore:
    from mailmux.backend.store.sqlite import SqliteStore

    assert isinstance(store, SqliteStore)
    return store


# replication --------------------------------------------------------------------------------


@main.group()
def replication() -> None:
    """Inspect replication between this node and its peers."""


@replication.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def replication_status(config_path: Path, as_json: bool) -> None:
    """Per-peer backlog (changes not yet acknowledged) and lag (time since the last ack)."""
    config = _load_config(config_path)
    rows = _with_store(config_path, lambda store: _replication_rows(store, config))
    if as_json:
        click.echo(json.dumps({"node": config.node_id, "peers": rows}))
        return
    click.echo(f"{'peer':<10} {'acked':>8} {'local':>8} {'backlog':>8} {'lag(s)':>8}")
    for row in rows:
        lag = "-" if row["lag_seconds"] is None else f"{row['lag_seconds']:.1f}"
        click.echo(f"{row['peer']:<10} {row['acked']:>8} {row['local']:>8} "
                   f"{row['backlog']:>8} {lag:>8}")


async def _replication_rows(store: MailStore, config: BackendConfig) -> list[dict[str, Any]]:
    from mailmux.backend.store.sqlite import SqliteStore

    assert isinstance(store, SqliteStore)
    acks = await store.meta("ack:")
    local = await store.local_seq()
    rows = []
    for peer, _, _ in config.replication.peers:
        raw = acks.get(f"ack:{peer}")
        info = json.loads(raw) if raw else {}
        acked = int(info.get("acked", 0)) if info.get("origin") == store.origin else 0
        at = info.get("at")
        rows.append({"peer": peer, "acked": acked, "local": local,
                     "backlog": max(0, local - acked),
                     "lag_seconds": None if at is None else round(time.time() - float(at), 1)})
    return rows


# outbound queue and DKIM keys (mailmux/outbound/cli.py) -----------------------------------

main.add_command(outbound_cli.queue)
main.add_command(outbound_cli.dkim)
main.add_command(gatewaykey_cli.gateway_key)


# helpers ----------------------------------------------------------------------------------


def _load_config(path: Path) -> BackendConfig:
    try:
        return load(path)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_FAILURE)


def _read_password() -> str:
    # sys.stdin, not click.get_text_stream (deprecated in click 8.5): CliRunner swaps it too.
    stdin = sys.stdin
    # From a pipe only the line ending is removed: spaces may be part of a password.
    password = (
        getpass.getpass("Password: ") if stdin.isatty() else stdin.readline().rstrip("\r\n")
    )
    if not password:
        _fail("error: empty password refused")
    return password


def _with_store(config_path: Path, action: Callable[[MailStore], Awaitable[T]]) -> T:
    config = _load_config(config_path)
    try:
        return asyncio.run(_store_action(config, action))
    except BackendError as exc:
        _fail(f"error: {exc.message}")
    except ENVIRONMENT_ERRORS as exc:
        _fail(f"error: {exc}")


async def _store_action(config: BackendConfig, action: Callable[[MailStore], Awaitable[T]]) -> T:
    from mailmux.backend.store.sqlite import SqliteStore

    os.umask(0o077)
    if not config.data_dir.exists():
        make_private_dir(config.data_dir)
    async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
        return await action(store)
