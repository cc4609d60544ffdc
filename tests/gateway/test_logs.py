"""Logs in normal operation: no third-party warnings, one INFO line per session event, JSON."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.gateway.conftest import ALICE, BOB
from tests.support.gateway import write_gateway_config
from tests.support.nodes import NodeProcess, split_address, write_config

pytestmark = pytest.mark.timeout(180)


def _start(args: list[str], stderr_path: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args, "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            env={**os.environ, "MAILMUX_LOG_LEVEL": "INFO"},
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, stderr_path.read_text()
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _json_lines(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # each is JSON
    for line in lines:
        assert {"ts", "level", "process", "logger", "msg"} <= line.keys(), line
    return lines


def test_submission_and_imap_leave_no_warning_on_the_gateway_stderr(
    node: NodeProcess, tmp_path: Path,
) -> None:
    gw = write_gateway_config(tmp_path / "gw.toml", [node.control])
    stderr_path = tmp_path / "gw.stderr"
    proc, ready = _start(["mailmux.gateway", "run", "--config", str(gw.config_path)],
                         stderr_path)
    try:
        for n in range(3):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = ALICE[0], BOB[0], f"quiet {n}"
            msg.set_content("hello\n")
            with smtplib.SMTP(*split_address(ready["submission"]), timeout=30) as smtp:
                smtp.login(*ALICE)
                smtp.send_message(msg)
        imap = imaplib.IMAP4(*split_address(ready["imap"]), timeout=30)
        imap.login(*BOB)
        imap.select("INBOX")
        imap.logout()
    finally:
        _stop(proc)
    lines = _json_lines(stderr_path)
    loud = [line for line in lines if line["level"] not in ("INFO", "DEBUG")]
    assert loud == []
    assert not any("deprecat" in line["msg"].lower() for line in lines)
    accepted = [line for line in lines if line["msg"].startswith("submission:")
                and " accepted by " in line["msg"]]
    assert len(accepted) == 3
    assert any(line["msg"].endswith(f"session of {BOB[0]} ended") for line in lines)
    assert {line["process"] for line in lines} == {"gateway"}


def test_node_logs_json_lines(tmp_path: Path) -> None:
    made = write_config(tmp_path, "j")
    stderr_path = tmp_path / "j.stderr"
    proc, _ = _start(["mailmux.backend", "run", "--config", str(made.config_path)], stderr_path)
    _stop(proc)
    lines = _json_lines(stderr_path)
    assert any(line["msg"].startswith("node j ready") for line in lines)
    assert {line["process"] for line in lines} == {"j"}
