"""Start real `mailmux-backend` processes for tests.

Each node runs in its own process group (start_new_session) so the fixture can kill it and
anything it spawned with one signal, whatever happens in the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SECRET = "test-pool-secret-0123456789"
# The key test gateways hold (never the pool secret); every test node knows it from its first
# start, as if `mailmux-backend gateway-key add test-gateway --key-file ...` had been run.
GATEWAY_KEY_NAME = "test-gateway"
GATEWAY_KEY = f"{GATEWAY_KEY_NAME}:test-gateway-key-0123456789abcdef"
DOMAIN = "example.test"
READY_TIMEOUT = 30.0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass
class NodeProcess:
    node_id: str
    config_path: Path
    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, object] = field(default_factory=dict)
    stderr_path: Path | None = None
    with_gateway_key: bool = True  # False: a node that never heard of the test gateway key

    @property
    def imap(self) -> tuple[str, int]:
        return split_address(str(self.ready["imap"]))

    @property
    def smtp(self) -> tuple[str, int]:
        return split_address(str(self.ready["smtp"]))

    @property
    def control(self) -> tuple[str, int]:
        return split_address(str(self.ready["control"]))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailmux.backend", *args, "--config", str(self.config_path)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add_user(self, user: str, password: str) -> None:
        result = self.cli("user", "add", user, stdin=password + "\n")
        assert result.returncode == 0, result.stderr

    def add_test_gateway_key(self) -> None:
        """Register GATEWAY_KEY in the node's store (in-process: a subprocess per node would
        slow every test down); again after a wipe, so a test gateway can always use it."""
        if self.with_gateway_key:
            register_gateway_key(self.config_path, GATEWAY_KEY)

    def start(self, env: dict[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.add_test_gateway_key()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()  # the previous run's pipe
        self.stderr_path = self.data_dir.parent / f"{self.node_id}.stderr.log"
        stderr: IO[str] = self.stderr_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailmux.backend", "run", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        stderr.close()
        self.ready = self._read_ready_line()

    def _read_ready_line(self) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        # readline blocks, but the node either prints its line or exits (EOF) well before
        # READY_TIMEOUT; pytest-timeout guards the pathological case.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node {self.node_id} exited early:\n{self.log()}")
            line = line.strip()
            if line.startswith("{"):
                ready: dict[str, object] = json.loads(line)
                return ready
        raise RuntimeError(f"node {self.node_id} not ready in {READY_TIMEOUT}s")

    def log(self) -> str:
        path = self.stderr_path
        return path.read_text() if path is not None and path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()


def register_gateway_key(config_path: Path, line: str) -> None:
    """Store a gateway key (NAME:SECRET) in a stopped node's database, as the CLI would."""
    from mailmux.backend.config import load
    from mailmux.backend.store.gatewaykeys import GatewayKeyExists
    from mailmux.backend.store.sqlite import SqliteStore

    config = load(config_path)
    name, _, secret = line.partition(":")

    async def add() -> None:
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            with contextlib.suppress(GatewayKeyExists):
                await store.add_gateway_key(name, secret)

    # A thread of its own: the caller may be inside a running event loop (an async test).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, add()).result(timeout=60)
    for path in config.db_path.parent.glob(config.db_path.name + "*"):
        path.chmod(0o600)


def write_config(
    root: Path, node_id: str, extra: str = "", replication: str = ""
) -> NodeProcess:
    data_dir = root / node_id
    # Private, as a node requires of its data dir.
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = root / f"{node_id}.toml"
    config.write_text(
        f'node_id = "{node_id}"\n'
        f'data_dir = "{data_dir}"\n'
        f'domains = ["{DOMAIN}"]\n'
        f'pool_secret = "{SECRET}"\n'
        'listen_imap = "127.0.0.1:0"\n'
        'listen_smtp = "127.0.0.1:0"\n'
        'listen_control = "127.0.0.1:0"\n'
        f"{extra}\n{replication}\n"
    )
    return NodeProcess(node_id=node_id, config_path=config, data_dir=data_dir)
