"""Start a real `mailmux-gateway run` process (own process group, killed by the fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.nodes import GATEWAY_KEY, split_address

READY_TIMEOUT = 30.0
# The gateway's event loop in tests: the config's default ("auto": uvloop), or
# MAILMUX_TEST_EVENT_LOOP=asyncio (or uvloop) to run the same tests on that loop.
EVENT_LOOP = os.environ.get("MAILMUX_TEST_EVENT_LOOP")


@dataclass
class GatewayProcess:
    config_path: Path
    proc: subprocess.Popen[str] | None = None
    ready: dict[str, str] = field(default_factory=dict)
    stderr_path: Path | None = None

    @property
    def imap(self) -> tuple[str, int]:
        return split_address(self.ready["imap"])

    @property
    def submission(self) -> tuple[str, int]:
        return split_address(self.ready["submission"])

    def start(self) -> None:
        self.stderr_path = self.config_path.with_suffix(".stderr.log")
        with self.stderr_path.open("a") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailmux.gateway", "run", "--config",
                 str(self.config_path)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                env={**os.environ, "MAILMUX_LOG_LEVEL": "DEBUG"},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"gateway exited early:\n{self.log()}")
        self.ready = json.loads(line)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailmux.gateway", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    def log(self) -> str:
        path = self.stderr_path
        return path.read_text() if path is not None and path.exists() else ""

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def write_gateway_config(
    path: Path, controls: list[tuple[str, int]], extra: str = "", key: str = GATEWAY_KEY
) -> GatewayProcess:
    """A gateway config naming a key file (0600) that holds `key` (NAME:SECRET)."""
    pool = ", ".join(f'"{h}:{p}"' for h, p in controls)
    key_file = path.with_suffix(".gateway-key")
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    path.write_text(
        f'gateway_key_file = "{key_file}"\n'
        'listen_imap = "127.0.0.1:0"\n'
        'listen_submission = "127.0.0.1:0"\n'
        f"pool = [{pool}]\n"
        'domains = ["example.test"]\n'
        "discovery_timeout = 0.5\n"
        "request_timeout = 3.0\n"
        f"{extra}\n"
        + ("" if EVENT_LOOP is None or "event_loop" in extra else f'event_loop = "{EVENT_LOOP}"\n')
    )
    return GatewayProcess(config_path=path)
