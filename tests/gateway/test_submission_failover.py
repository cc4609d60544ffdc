"""A submission in progress when its node hangs: failover on the heartbeat, one 250, one copy."""

from __future__ import annotations

import imaplib
import re
import signal
import smtplib
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import wait_until
from tests.gateway.replicated import Pool, replicated  # noqa: F401  (fixture)
from tests.gateway.test_failover import gateway_with
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(180)


def _message(subject: str) -> bytes:
    return (f"From: {ALICE[0]}\r\nTo: {ALICE[0]}\r\nSubject: {subject}\r\n\r\n"
            f"body of {subject}\r\n").encode()


def _copies(node: NodeProcess, subject: str) -> int:
    with imaplib.IMAP4(*node.imap, timeout=30) as direct:
        direct.login(*ALICE)
        direct.select("INBOX", readonly=True)
        _, data = direct.search(None, "SUBJECT", f'"{subject}"')
        return len(data[0].split())


def _accepted_by(gw: GatewayProcess) -> list[str]:
    return re.findall(r"submission: \w+ from \S+ to \S+ accepted by (\w+)", gw.log())


def test_a_submission_to_a_stopped_node_fails_over_on_the_heartbeat(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    nodes = replicated("abc").nodes
    # The cached discovery answer keeps the stopped node first in line, so the submission is
    # really handed to it (a fresh discovery would skip a node that cannot answer); a long
    # request_timeout leaves only the heartbeat to explain a quick recovery.
    gw = gateway_with(gateway_factory, list(nodes.values()),
                      extra='selection = "first-responder"\ndiscovery_cache_ttl = 120')
    with smtplib.SMTP(*gw.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        assert smtp.sendmail(ALICE[0], [ALICE[0]], _message("warm up")) == {}
        chosen = nodes[_accepted_by(gw)[-1]]
        chosen.signal(signal.SIGSTOP)
        code, reply = smtp.mail(ALICE[0])
        assert code == 250, reply
        assert smtp.rcpt(ALICE[0])[0] == 250
        code, reply = smtp.data(_message("while hung"))
        assert code == 250, reply
        assert reply.startswith(b"2.0.0 Ok: queued as "), reply
    log = gw.log()
    assert f"heartbeat: {chosen.node_id} hung" in log, log[-3000:]
    assert _accepted_by(gw)[-1] != chosen.node_id
    chosen.signal(signal.SIGCONT)
    wait_until(lambda: all(_copies(n, "while hung") >= 1 for n in nodes.values()),
               "every node to hold the message", deadline=60)
    assert [_copies(n, "while hung") for n in nodes.values()] == [1, 1, 1]
