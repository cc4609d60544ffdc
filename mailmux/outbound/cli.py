"""`mailmux-backend queue ...` and `mailmux-backend dkim keygen`: the outbound queue for operators.

Queue commands open the node's store directly (safe while the node runs: WAL, one writer at a
time); `retry` and `delete` are change records like any other, so every replica learns them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from mailmux.backend.config import BackendConfig, ConfigError, load
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.outbound.dkim_sign import generate
from mailmux.outbound.queue import OutboundQueue, QueuedMessage

T = TypeVar("T")

config_option = click.option("--config", "config_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="the node's TOML config file")
json_option = click.option("--json", "as_json", is_flag=True, help="JSON instead of text")


def _config(path: Path) -> BackendConfig:
    try:
        return load(path)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from exc


def _with_queue(path: Path, action: Callable[[OutboundQueue], Awaitable[T]]) -> T:
    config = _config(path)

    async def run() -> T:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            return await action(OutboundQueue(store))

    return asyncio.run(run())


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def queue() -> None:
    """Inspect and manage the outbound mail queue."""


@queue.command("list")
@config_option
@json_option
def queue_list(config_path: Path, as_json: bool) -> None:
    """Messages waiting for delivery, oldest first."""
    messages = _with_queue(config_path, lambda q: q.queued())
    if as_json:
        click.echo(json.dumps([m.as_json() for m in messages]))
        return
    click.echo(f"{'id':<34} {'age':>8} {'tries':>5} {'owner':<8} {'next':<19} recipients")
    now = time.time()
    for m in messages:
        click.echo(f"{m.id:<34} {_age(now - m.created):>8} {m.attempts:>5} {m.owner:<8} "
                   f"{_when(m.next_attempt):<19} {', '.join(m.pending)}")
    click.echo(f"{len(messages)} message(s) queued")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@queue.command("show")
@click.argument("message_id")
@config_option
@json_option
def queue_show(message_id: str, config_path: Path, as_json: bool) -> None:
    """One message: envelope, lease, per-recipient state and last answers."""
    message = _with_queue(config_path, lambda q: q.get(message_id))
    if message is None:
        raise click.ClickException(f"no message {message_id} in the outbound queue")
    if as_json:
        click.echo(json.dumps(message.as_json()))
        return
    _print(message)


def _print(m: QueuedMessage) -> None:
    click.echo(f"id:        {m.id}\nstate:     {m.state} {m.done_reason}".rstrip())
    click.echo(f"sender:    <{m.sender}>\nsize:      {m.size}\nqueued:    {_when(m.created)}")
    click.echo(f"attempts:  {m.attempts}\nnext:      {_when(m.next_attempt)}")
    click.echo(f"owner:     {m.owner} (epoch {m.epoch}, lease until {_when(m.lease_until)})")
    for address, info in m.recipients.items():
        click.echo(f"  <{address}> {info['state']} {info.get('text', '')}".rstrip())


@queue.command("retry")
@click.argument("message_id")
@config_option
def queue_retry(message_id: str, config_path: Path) -> None:
    """Try MESSAGE_ID again now instead of at its scheduled time."""
    lease = _config(config_path).outbound.lease
    if not _with_queue(config_path, lambda q: q.retry(message_id, time.time(), lease)):
        raise click.ClickException(f"no queued message {message_id}")
    click.echo(f"{message_id} will be retried now")


@queue.command("delete")
@click.argument("message_id")
@config_option
def queue_delete(message_id: str, config_path: Path) -> None:
    """Remove MESSAGE_ID from the queue on every node, without a bounce."""
    async def delete(q: OutboundQueue) -> bool:
        message = await q.get(message_id)
        if message is None or message.state != "queued":
            return False
        await q.finish(message_id, "deleted by operator")
        return True

    if not _with_queue(config_path, delete):
        raise click.ClickException(f"no queued message {message_id}")
    click.echo(f"deleted {message_id}")


@click.group()
def dkim() -> None:
    """DKIM keys for signing outbound mail."""


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", default="mailmux", show_default=True)
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="where to write the private key (default: DATA_DIR/dkim/DOMAIN.SELECTOR.pem)")
@config_option
def dkim_keygen(domain: str, selector: str, key_file: Path | None, config_path: Path) -> None:
    """Make a key for DOMAIN and print the DNS TXT record to publish."""
    config = _config(config_path)
    path = key_file or config.data_dir / "dkim" / f"{domain.lower()}.{selector}.pem"
    try:
        record = generate(domain.lower(), selector, path)
    except FileExistsError as exc:
        raise click.ClickException(f"{path} exists; remove it or choose --key-file") from exc
    click.echo(record)
    click.echo(f"; private key written to {path}; add to the node config:", err=True)
    click.echo(f'; [outbound.dkim."{domain.lower()}"]\n; selector = "{selector}"\n'
               f'; key_file = "{path}"', err=True)
