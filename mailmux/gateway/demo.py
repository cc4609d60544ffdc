"""`mailmux-gateway demo`: a whole pool on this machine, for a first look or a Thunderbird test.

Starts N backend nodes as child processes (each in its own process group, so each can be killed
by PID to watch failover) that replicate to each other, creates alice@example.test and
bob@example.test (on the first node: replication copies them), then runs a gateway in this
process and prints one JSON line saying where everything is. Ctrl-C (or SIGTERM) stops the
gateway and then every node, one line each.

The data dir is private (0700) and its secret-bearing files are 0600. A re-run on the same
`--data-dir` reuses the pool secret and passwords kept in `DATA_DIR/demo.json`, so the printed
passwords always work; if that file is gone, the users' passwords are reset on every node.
The pool secret is for the nodes only: the gateway holds a gateway key of its own
(`DATA_DIR/demo-gateway.key`, issued with `mailmux-backend gateway-key add`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mailmux.backend.control.client import query
from mailmux.gateway import config as gateway_config
from mailmux.gateway.app import Gateway
from mailmux.gateway.pool import parse_endpoint
from mailmux.privatefiles import make_private_dir, write_private
from mailmux.protocol.control.codec import ControlError
from mailmux.protocol.control.keys import GatewayKey, GatewayKeyError, parse_key
from mailmux.protocol.control.messages import LoadRequest

log = logging.getLogger(__name__)

DOMAIN = "example.test"
USERS = ("alice", "bob")
NODE_IDS = "abcdefghij"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LINK_TIMEOUT = 15.0
STATE_FILE = "demo.json"
GATEWAY_KEY_NAME = "demo-gateway"
GATEWAY_KEY_FILE = "demo-gateway.key"
SECRET_FILE = "pool.key"

Say = Callable[[str], None]


class DemoError(Exception):
    """The demo cannot start; the message says why and what to look at."""


@dataclass
class DemoNode:
    node_id: str
    config_path: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)  # fixed ports only (--port-base)
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, object] | None = None


@dataclass(frozen=True)
class DemoState:
    """What a re-run must reuse for its printed passwords to work."""

    secret: str
    passwords: dict[str, str]
    reused: bool


def _port(base: int | None, offset: int) -> int:
    return 0 if base is None else base + offset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_state(data_dir: Path) -> DemoState:
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        secret, passwords = str(raw["secret"]), {str(k): str(v) for k, v in raw["users"].items()}
        if len(secret) >= 8 and all(f"{n}@{DOMAIN}" in passwords for n in USERS):
            return DemoState(secret, passwords, reused=True)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s): users' passwords will be reset", path, exc)
    passwords = {f"{name}@{DOMAIN}": secrets.token_urlsafe(9) for name in USERS}
    state = DemoState(secrets.token_hex(16), passwords, reused=False)
    write_private(path, json.dumps({"secret": state.secret, "users": passwords}) + "\n")
    return state


def write_node_config(data_dir: Path, index: int, port_base: int | None,
                      replication_ports: list[int]) -> DemoNode:
    node_id = NODE_IDS[index]
    offset = 10 + 10 * index
    ports = {"IMAP": _port(port_base, offset), "SMTP": _port(port_base, offset + 1),
             "control": _port(port_base, offset + 2), "replication": replication_ports[index]}
    peers = [f'"{NODE_IDS[i]}=127.0.0.1:{port}"'
             for i, port in enumerate(replication_ports) if i != index]
    text = "\n".join([
        f'node_id = "{node_id}"',
        f'data_dir = "{node_id}"',
        f'domains = ["{DOMAIN}"]',
        f'pool_secret_file = "{SECRET_FILE}"',
        f'listen_imap = "127.0.0.1:{ports["IMAP"]}"',
        f'listen_smtp = "127.0.0.1:{ports["SMTP"]}"',
        f'listen_control = "127.0.0.1:{ports["control"]}"',
        "[replication]",
        f'listen = "127.0.0.1:{ports["replication"]}"',
        f"peers = [{', '.join(peers)}]",
        "",
    ])
    path = data_dir / f"{node_id}.toml"
    write_private(path, text)
    fixed = {k: v for k, v in ports.items() if port_base is not None or k == "replication"}
    return DemoNode(node_id, path, data_dir / f"{node_id}.log", fixed)


def _backend(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailmux.backend", *args]


def _user_command(node: DemoNode, action: str, user: str,
                  password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _backend("user", action, user, "--config", str(node.config_path)),
        input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
    )


def add_user(node: DemoNode, user: str, password: str) -> None:
    result = _user_command(node, "add", user, password)
    if result.returncode != 0 and "exists" not in result.stderr:
        raise DemoError(f"adding {user} on node {node.node_id}: {result.stderr.strip()}")


def reset_password(node: DemoNode, user: str, password: str) -> None:
    """Set `password` on `node` if it holds `user` (a node that does not gets it by replication)."""
    result = _user_command(node, "passwd", user, password)
    if result.returncode != 0 and "no user" not in result.stderr.lower():
        raise DemoError(f"resetting {user} on node {node.node_id}: {result.stderr.strip()}")


def demo_gateway_key(key_file: Path) -> GatewayKey:
    """The demo gateway's key: the one in `key_file` from an earlier run, or a new one."""
    if key_file.exists():
        try:
            return parse_key(key_file.read_text())
        except (OSError, GatewayKeyError) as exc:
            raise DemoError(f"{key_file}: {exc}") from exc
    key = GatewayKey(GATEWAY_KEY_NAME, secrets.token_urlsafe(32).encode())
    write_private(key_file, key.line() + "\n")
    return key


async def prepare_gateway_key(nodes: list[DemoNode], key_file: Path) -> None:
    """Register the demo gateway's key on every node, as `mailmux-backend gateway-key add`
    does (replication would bring it too, but the gateway's first discovery must not wait for
    that). The gateway never gets the pool secret."""
    from mailmux.backend.config import load as load_node_config
    from mailmux.backend.store.gatewaykeys import GatewayKeyExists
    from mailmux.backend.store.sqlite import SqliteStore

    key = demo_gateway_key(key_file)
    for node in nodes:
        config = load_node_config(node.config_path)
        if not config.data_dir.exists():  # an existing one is the node's to judge at start
            make_private_dir(config.data_dir)
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            with contextlib.suppress(GatewayKeyExists):
                await store.add_gateway_key(key.name, key.secret.decode())


async def prepare_users(nodes: list[DemoNode], state: DemoState) -> None:
    """Create the users on the first node; after a lost state file, reset them everywhere."""
    for user, password in state.passwords.items():
        await asyncio.to_thread(add_user, nodes[0], user, password)
    if not state.reused:
        await asyncio.gather(*(
            asyncio.to_thread(reset_password, node, user, password)
            for node in nodes if node.config_path.parent.joinpath(node.node_id).exists()
            for user, password in state.passwords.items()
        ))


def check_ports_free(wanted: dict[str, int]) -> None:
    """Fail before starting anything if a fixed port is taken, naming it and its role."""
    for role, port in wanted.items():
        if port == 0:
            continue
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                # As asyncio does for its listeners, so a port in TIME_WAIT is not "busy".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    raise DemoError(
                        f"port {port} ({role}) on 127.0.0.1 is already in use: stop what holds "
                        "it or choose another --port-base"
                    ) from None


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"  {line}" for line in tail)


async def start_node(node: DemoNode, log_file: IO[bytes]) -> None:
    node.proc = subprocess.Popen(
        _backend("run", "--config", str(node.config_path)),
        stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
    )
    assert node.proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(node.proc.stdout.readline), READY_TIMEOUT)
    if not line:
        log_file.flush()
        ports = ", ".join(f"{role} {port}" for role, port in node.ports.items() if port)
        raise DemoError(
            f"node {node.node_id} exited before it was ready (ports: {ports or 'any free'}); "
            f"its log is {node.log_path}:\n{_log_tail(node.log_path)}"
        )
    node.ready = json.loads(line)


async def _start_nodes(nodes: list[DemoNode], logs: Sequence[IO[bytes]]) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            for node, log_file in zip(nodes, logs, strict=True):
                group.create_task(start_node(node, log_file))
    except ExceptionGroup as failed:
        # One node's reason is what the user needs; the others were cancelled because of it.
        raise failed.exceptions[0] from None


async def wait_for_links(nodes: Sequence[DemoNode], secret: str, deadline: float = LINK_TIMEOUT,
                         ) -> bool:
    """Until every node hears from every peer: before that, a change that needs two copies
    is refused with 451/NO [UNAVAILABLE], which a newcomer's first message must not meet."""
    addresses = [parse_endpoint(str(n.ready["control"])) for n in nodes if n.ready]
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        if all(await asyncio.gather(*(_linked(a, secret) for a in addresses))):
            return True
        await asyncio.sleep(0.1)
    return False


async def _linked(address: tuple[str, int], secret: str) -> bool:
    try:
        reply = await query(address, LoadRequest(), secret.encode(), timeout=1.0)
    except (TimeoutError, OSError, ControlError):
        return False
    flags = [v for k, v in reply.details.items() if k.endswith(".responsive")]
    return all(v == 1.0 for v in flags)


def stop_nodes(nodes: list[DemoNode], say: Say) -> None:
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for node in running:
        assert node.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGTERM)
    for node in running:
        assert node.proc is not None
        how = "stopped"
        try:
            node.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            how = "killed (did not stop within 10 s)"
        say(f"{how} node {node.node_id} (pid {node.proc.pid}, exit {node.proc.returncode})")
    for node in nodes:
        if node.proc is not None and node.proc.stdout is not None:
            node.proc.stdout.close()


def _print(text: str) -> None:
    print(text, flush=True)


async def run_demo(count: int, data_dir: Path, port_base: int | None,
                   say: Say = _print) -> None:
    if not 1 <= count <= len(NODE_IDS):
        raise ValueError(f"--nodes must be 1-{len(NODE_IDS)}")
    make_private_dir(data_dir)
    state = load_state(data_dir)
    write_private(data_dir / SECRET_FILE, state.secret + "\n")
    # Peers must know each other's replication port before any of them starts.
    replication_ports = [_port(port_base, 13 + 10 * i) or _free_port() for i in range(count)]
    nodes = [write_node_config(data_dir, i, port_base, replication_ports) for i in range(count)]
    fixed = {"gateway IMAP": _port(port_base, 0), "gateway submission": _port(port_base, 1)}
    for node in nodes:
        fixed |= {f"node {node.node_id} {role}": port for role, port in node.ports.items()}
    check_ports_free(fixed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logs = [n.log_path.open("ab") for n in nodes]
    try:
        await prepare_users(nodes, state)
        key_file = (data_dir / GATEWAY_KEY_FILE).absolute()
        await prepare_gateway_key(nodes, key_file)
        await _start_nodes(nodes, logs)
        if not await wait_for_links(nodes, state.secret):
            say(f"warning: the nodes did not all link to each other within {LINK_TIMEOUT:.0f} s; "
                "mail needing two copies is refused until they do (see the node logs)")
        config = gateway_config.from_dict({
            "gateway_key_file": str(key_file),
            "listen_imap": f"127.0.0.1:{_port(port_base, 0)}",
            "listen_submission": f"127.0.0.1:{_port(port_base, 1)}",
            "pool": [str(n.ready["control"]) for n in nodes if n.ready],
            "domains": [DOMAIN],
        })
        async with Gateway(config) as gateway:
            say(json.dumps({
                **gateway.ready,
                "nodes": [{"id": n.node_id, "pid": n.proc.pid if n.proc else None,
                           **{k: n.ready.get(k) for k in ("imap", "smtp", "control")},
                           "log": str(n.log_path)}
                          for n in nodes if n.ready is not None],
                "users": [{"user": u, "password": p} for u, p in state.passwords.items()],
                "data_dir": str(data_dir),
            }))
            await stop.wait()
        say(f"stopped gateway (pid {os.getpid()})")
    finally:
        await asyncio.to_thread(stop_nodes, nodes, say)
        for f in logs:
            f.close()


def run_demo_in(count: int, data_dir: Path | None, port_base: int | None, keep: bool,
                make_temp: Callable[[], Path], say: Say = _print) -> None:
    """Run the demo; a temporary data dir (no --data-dir) is removed afterwards unless `keep`."""
    directory = data_dir if data_dir is not None else make_temp()
    try:
        asyncio.run(run_demo(count, directory, port_base, say))
    finally:
        if data_dir is None and not keep:
            shutil.rmtree(directory, ignore_errors=True)
            say(f"removed temporary data dir {directory}")
        elif data_dir is None:
            say(f"kept data dir {directory} (rerun with --data-dir {directory} to reuse it)")
