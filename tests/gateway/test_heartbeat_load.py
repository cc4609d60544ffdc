"""No false hang verdicts under load: nodes busy with long commands on a machine kept busy by
CPU burners are alive, and are not failed over; a real SIGSTOP is still found."""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap, wait_until
from tests.gateway.replicated import Pool, replicated  # noqa: F401  (fixture)
from tests.gateway.test_failover import gateway_with, message, serving
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(300)

LOAD_SECONDS = 12.0
BURNERS = 4  # CPU-bound processes on a 2-core machine: every process waits for its turn


@pytest.fixture
def burners() -> Iterator[Callable[[], None]]:
    """start(): CPU burners in their own process groups, killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        for _ in range(BURNERS):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          start_new_session=True))

    try:
        yield start
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _busy_client(address: tuple[str, int], until: float, errors: list[BaseException],
                 rounds: list[int]) -> None:
    """Long commands, back to back: body searches (no index helps) and whole-body FETCHes."""
    try:
        with imaplib.IMAP4(*address, timeout=120) as client:
            client.login(*ALICE)
            client.select("INBOX", readonly=True)
            while time.monotonic() < until:
                typ, _ = client.search(None, "BODY", '"no such needle anywhere"')
                assert typ == "OK"
                typ, _ = client.fetch("1:*", "(BODY.PEEK[])")
                assert typ == "OK"
                rounds.append(1)
    except (imaplib.IMAP4.error, OSError, AssertionError) as exc:  # shown by the test
        errors.append(exc)


def test_busy_nodes_on_a_loaded_machine_are_not_hung_but_a_stopped_one_is(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess], burners: Callable[[], None],
) -> None:
    nodes = replicated("abc").nodes
    gw = gateway_with(gateway_factory, list(nodes.values()))
    filler = b"".join(b"line %d of a long message with words to search through\r\n" % i
                      for i in range(4000))
    with imaplib.IMAP4(*gw.imap, timeout=120) as setup:
        setup.login(*ALICE)
        for i in range(30):
            assert setup.append("INBOX", "", None, message(f"bulk {i}") + filler)[0] == "OK"
    burners()
    errors: list[BaseException] = []
    rounds: list[int] = []
    until = time.monotonic() + LOAD_SECONDS
    threads = [threading.Thread(target=_busy_client, args=(gw.imap, until, errors, rounds))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=LOAD_SECONDS + 200)
    log = gw.log()
    assert errors == [], (errors, log[-3000:])
    assert rounds, "the busy clients did no work"
    assert "hung" not in log and "failing over" not in log, log[-3000:]
    # Still loaded: a node that really stops is found and its session fails over.
    client = RawImap(gw.imap)
    try:
        client.login(*ALICE)
        client.command("s", "EXAMINE INBOX")
        stopped = serving(gw, ALICE[0], nodes)
        stopped.signal(signal.SIGSTOP)
        answer = client.command("q", "SEARCH SUBJECT \"bulk 7\"")
        assert answer == [b"* SEARCH 8\r\n", b"q OK SEARCH completed\r\n"], answer
        wait_until(lambda: f"heartbeat: {stopped.node_id} hung" in gw.log(),
                   "the stopped node to be found hung")
    finally:
        client.close()
