"""`mailmux-gateway`: run the gateway, look at the pool, or start a demo pool."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import click

from mailmux.backend.control.client import query
from mailmux.configfile import ConfigError
from mailmux.gateway.config import GatewayConfig, load
from mailmux.gateway.eventloop import event_loop_factory
from mailmux.gateway.pool import Pool
from mailmux.logsetup import LOG_FORMATS, setup_logging
from mailmux.protocol.control.codec import ControlError
from mailmux.protocol.control.messages import HealthRequest, LoadRequest

log = logging.getLogger("mailmux.gateway")

config_option = click.option(
    "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path), help="the gateway's TOML config file",
)


@click.group()
def main() -> None:
    """mailmux gateway: local IMAP and SMTP submission in front of a mailmux pool."""


log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
    help="log lines on stderr as text or as one JSON object each",
)


@main.command()
@config_option
@log_format_option
def run(config_path: Path, log_format: str) -> None:
    """Run the gateway until SIGTERM or SIGINT; prints one JSON line when ready."""
    config = _load(config_path)
    setup_logging("gateway", log_format)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            runner.run(_serve(config, config_path))
    except OSError as exc:
        _fail(f"error: {exc}")


async def _serve(config: GatewayConfig, config_path: Path) -> None:
    from mailmux.gateway.app import Gateway
    from mailmux.gateway.session.metrics import publish, status_path

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(config) as gateway:
        click.echo(json.dumps(gateway.ready))
        sys.stdout.flush()
        pool = gateway.pool
        figures = loop.create_task(
            publish(pool.metrics, pool.heartbeat.hangs, status_path(config_path)))
        await stop.wait()
        figures.cancel()


@main.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a gateway's config; exit 2 naming the bad key."""
    config = _load(config_path)
    sources = len(config.pool) + (config.srv_domain is not None) + (config.broadcast is not None)
    click.echo(f"config OK: {config_path} ({sources} pool source(s))")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def status(config_path: Path, as_json: bool) -> None:
    """A table of pool members: id, endpoints, alive, load, users, last error."""
    from mailmux.gateway.session.metrics import format_status, read_status, status_path

    config = _load(config_path)
    rows = asyncio.run(_status(config))
    failover = read_status(status_path(config_path))  # from the running gateway, if any
    if as_json:
        click.echo(json.dumps({"members": rows, "failover": failover}))
        return
    header = ("member", "id", "alive", "load", "sessions", "users", "queue", "version", "error")
    table: list[tuple[str, ...]] = [header, *(
        (str(r["control"]), str(r["id"] or "-"), "yes" if r["alive"] else "NO",
         f"{r['load']:.1f}" if isinstance(r["load"], float) else "-",
         str(r["sessions"]) if r["sessions"] is not None else "-",
         str(r["users"]) if r["users"] is not None else "-",
         _queue(r), str(r["version"] or "-"), str(r["error"] or ""))
        for r in rows
    )]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if failover:
        click.echo("\nfailover (the running gateway):")
        for line in format_status(failover):
            click.echo(line)


async def _status(config: GatewayConfig) -> list[dict[str, object]]:
    pool = Pool(config)
    members = await pool.members()
    return list(await asyncio.gather(*(_member_status(config, m) for m in members)))


async def _member_status(config: GatewayConfig, member: tuple[str, int]) -> dict[str, object]:
    row: dict[str, object] = {
        "control": f"{member[0]}:{member[1]}", "id": None, "alive": False, "load": None,
        "sessions": None, "users": None, "version": None, "error": None,
        "queued": None, "oldest_s": None,
    }
    timeout = max(config.discovery_timeout, 1.0)
    try:
        health = await query(member, HealthRequest(), config.gateway_key, timeout=timeout)
        load = await query(member, LoadRequest(), config.gateway_key, timeout=timeout)
    except (TimeoutError, OSError, ControlError) as exc:
        row["error"] = str(exc) or type(exc).__name__
        return row
    users = load.details.get("users")
    sessions = load.details.get("sessions")
    row.update(
        id=health.node_id, alive=health.ok, load=load.load, version=health.version,
        sessions=int(sessions) if sessions is not None else None,
        users=int(users) if users is not None else None,
        queued=_int(load.details.get("outbound.queued")),
        oldest_s=load.details.get("outbound.oldest_s"),
    )
    return row


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _queue(row: dict[str, object]) -> str:
    """Outbound queue size and the age of its oldest message, e.g. '3 (2m)'."""
    if row["queued"] is None:
        return "-"
    oldest = row["oldest_s"]
    return f"{row['queued']} ({int(oldest) // 60}m)" if isinstance(oldest, float) and oldest \
        else str(row["queued"])


@main.command()
@click.argument("user")
@config_option
@click.option("--json", "as_json", is_flag=True)
def discover(user: str, config_path: Path, as_json: bool) -> None:
    """Ask the pool who serves USER; show every answer with its timing."""
    config = _load(config_path)
    started = time.monotonic()
    answers = asyncio.run(Pool(config).ask(user))
    elapsed = time.monotonic() - started
    rows = [
        {"id": a.reply.node_id, "control": f"{a.control[0]}:{a.control[1]}",
         "serves": a.reply.serves, "imap": a.reply.imap, "smtp": a.reply.smtp,
         "load": a.reply.load, "ms": round(a.latency * 1000, 1)}
        for a in answers
    ]
    if as_json:
        click.echo(json.dumps({"user": user, "answers": rows, "ms": round(elapsed * 1000, 1)}))
        return
    for r in rows:
        click.echo(f"{r['id']:<8} {'serves' if r['serves'] else 'no':<7} imap {r['imap']:<22}"
                   f" smtp {r['smtp']:<22} load {r['load']:6.1f} {r['ms']:7.1f} ms")
    click.echo(f"{sum(r['serves'] is True for r in rows)} of {len(rows)} answering member(s) "
               f"serve {user} ({elapsed * 1000:.0f} ms)")


@main.command()
@click.option("--nodes", default=3, show_default=True, help="backend nodes to start")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where nodes keep their data (default: a new temporary directory)")
@click.option("--port-base", type=int, default=None,
              help="gateway IMAP on N, submission on N+1, node i on N+10+10i.. (default: any)")
@click.option("--keep", is_flag=True,
              help="keep the temporary data dir on exit (default: remove it)")
@log_format_option
def demo(nodes: int, data_dir: Path | None, port_base: int | None, keep: bool,
         log_format: str) -> None:
    """Start a demo pool (N nodes + gateway) with users alice and bob; Ctrl-C stops it."""
    from mailmux.gateway.demo import DemoError, run_demo_in

    setup_logging("gateway", log_format)
    try:
        run_demo_in(nodes, data_dir, port_base, keep,
                    lambda: Path(tempfile.mkdtemp(prefix="mailmux-demo-")))
    except (OSError, DemoError, ValueError, ConfigError) as exc:
        _fail(f"error: {exc}")


def _load(path: Path) -> GatewayConfig:
    try:
        return load(path)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)

