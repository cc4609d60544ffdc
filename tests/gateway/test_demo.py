"""`mailmux-gateway demo`: starts, prints its JSON line, serves a login, stops on SIGINT."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_demo_starts_and_serves_a_login(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailmux.gateway", "demo", "--nodes", "3",
         "--data-dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        host, _, port = ready["imap"].rpartition(":")
        user = ready["users"][0]
        client = imaplib.IMAP4(host, int(port), timeout=30)
        client.login(user["user"], user["password"])
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        assert time.monotonic() - started < 15
        assert len(ready["nodes"]) == 3 and all(n["pid"] for n in ready["nodes"])
        pids = [n["pid"] for n in ready["nodes"]]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
