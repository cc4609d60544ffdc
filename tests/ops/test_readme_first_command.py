"""README's first command on a fresh virtualenv: install the checkout, start the demo, use it.

The venv sees the system's site-packages and pip installs the checkout with --no-deps and
--no-build-isolation, so the test needs no network and takes seconds; what it checks is that
the checkout installs as a package on its own (entry points, package data, no import that only
works from the source tree) and that the demo it installs serves a login and a delivery.
"""

from __future__ import annotations

import imaplib
import json
import os
import queue
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE = 120.0
DELIVERY_DEADLINE = 60.0

pytestmark = pytest.mark.timeout(400)


def _copy_checkout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".hypothesis", ".imaptest", ".mypy_cache", ".ruff_cache",
                                    ".benchmarks", "data")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def test_readme_install_then_demo_serves_a_login_and_a_delivery(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && mailmux-gateway demo" in readme
    source = _copy_checkout(tmp_path / "checkout")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", "."],
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )
    assert pip.returncode == 0, pip.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mailmux; print(mailmux.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout

    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    demo = subprocess.Popen(
        ["mailmux-gateway", "demo"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        first = lines.get(timeout=READY_DEADLINE)
        assert first is not None, demo.stderr.read() if demo.stderr else ""
        ready = json.loads(first)
        _login_and_deliver(ready)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for stream in (demo.stdout, demo.stderr):
            if stream is not None:
                stream.close()
    assert not Path(ready["data_dir"]).exists()  # the temporary data dir is cleaned up


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def _login_and_deliver(ready: dict[str, object]) -> None:
    users = ready["users"]
    assert isinstance(users, list)
    alice, bob = users[0], users[1]
    subject = f"readme {time.time_ns()}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = alice["user"], bob["user"], subject
    msg.set_content("sent through the demo\n")
    with smtplib.SMTP(*_address(str(ready["submission"])), timeout=30) as smtp:
        smtp.login(alice["user"], alice["password"])
        smtp.send_message(msg)

    imap = imaplib.IMAP4(*_address(str(ready["imap"])), timeout=30)
    try:
        imap.login(bob["user"], bob["password"])
        deadline = time.monotonic() + DELIVERY_DEADLINE
        found: list[bytes] = [b""]
        while time.monotonic() < deadline:
            imap.select("INBOX")
            found = imap.search(None, "SUBJECT", f'"{subject}"')[1]
            if found[0]:
                break
            time.sleep(0.1)  # polling the mailbox until the delivery shows
        assert found[0], "the message sent by alice never reached bob's INBOX"
        body = imap.fetch(found[0].split()[0], "(BODY.PEEK[TEXT])")[1]
        assert re.search(rb"sent through the demo", body[0][1])  # type: ignore[index]
    finally:
        imap.logout()
