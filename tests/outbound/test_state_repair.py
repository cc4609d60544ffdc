"""The outbound queue is repaired by content too (statesync.py): a node whose queue rows were
deleted from its SQLite file while it was stopped gets them back, with their bodies, whatever
the log positions say."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest

from tests.outbound.conftest import outbound_table
from tests.outbound.test_pool import REMOTE, message, submit
from tests.support.dns_server import DnsServer
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess
from tests.support.smtp_sink import SmtpSink

DEADLINE = 30.0


def queue(node: NodeProcess) -> list[tuple[object, ...]]:
    """What replicas of the queue agree on (the schedule is the delivering node's own)."""
    db = sqlite3.connect(f"file:{node.data_dir / 'mailmux.sqlite3'}?mode=ro", uri=True,
                         timeout=10)
    try:
        return sorted(tuple(r) for r in db.execute(
            "SELECT q.id, q.sender, q.size, q.created, q.state, q.body_hash, "
            "length(b.data) FROM outbound_queue q LEFT JOIN bodies b ON b.hash = q.body_hash"))
    finally:
        db.close()


def wait_for(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling with a deadline


@pytest.mark.timeout(240)
def test_a_queue_row_lost_while_stopped_comes_back_with_its_body(
    make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    # The remote server defers every attempt: the message stays queued on every node.
    sink.handler.scripted[REMOTE] = ["451 4.3.0 try again later"] * 1000
    nodes = make_nodes("abc", outbound_table(sink, dns))
    a, b, c = nodes
    submit(gateway_factory(nodes), [REMOTE], message("kept-queued"))
    wait_for(lambda: all(len(queue(n)) == 1 and queue(n) == queue(a) for n in nodes),
             "the queued message on every node")
    before = queue(a)
    assert before[0][4] == "queued" and before[0][6]
    assert b.stop() == 0
    db = sqlite3.connect(b.data_dir / "mailmux.sqlite3")
    with db:
        db.execute("DELETE FROM bodies WHERE hash IN (SELECT body_hash FROM outbound_queue)")
        db.execute("DELETE FROM outbound_queue")
    db.close()
    b.start()
    wait_for(lambda: queue(b) == queue(a) == queue(c), "b's queue repaired")
    assert queue(b) == before
