"""Prometheus endpoints of a node and the gateway, scraped over HTTP while they serve clients."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import time
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import NodeProcess, split_address
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(240)

ALICE = ("alice@example.test", "alice-pw")
BOB = ("bob@example.test", "bob-pw")
METRICS = 'metrics_listen = "127.0.0.1:0"'
DEADLINE = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: object) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(address: object, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until `check` holds; counters move after the reply the client saw is sent."""
    deadline = time.monotonic() + DEADLINE
    while True:
        samples = scrape(address)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def metered_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    # A peer that is never up: every local change stays in its replication backlog.
    replication = (f'[replication]\nlisten = "127.0.0.1:0"\n'
                   f'peers = ["b=127.0.0.1:{free_port()}"]\n')
    node = node_factory("a", extra=METRICS, replication=replication)
    node.add_user(*ALICE)
    node.add_user(*BOB)
    node.start()
    return node


def test_node_metrics_move_with_logins_and_commands(metered_node: NodeProcess) -> None:
    address = metered_node.ready["metrics"]
    before = scrape(address)
    assert value(before, "mailmux_store_bytes") > 0
    assert value(before, "mailmux_replication_backlog", peer="b") > 0  # the users, unshipped
    assert value(before, "mailmux_outbound_queue_messages") == 0

    refused = imaplib.IMAP4(*metered_node.imap, timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        refused.login(ALICE[0], "wrong")
    refused.logout()
    client = imaplib.IMAP4(*metered_node.imap, timeout=30)
    client.login(*ALICE)
    client.select("INBOX")
    client.noop()
    during = wait_for(address, lambda s: value(
        s, "mailmux_imap_command_seconds_count", command="NOOP") >= 1)
    assert value(during, "mailmux_sessions", protocol="imap") == 1
    assert value(during, "mailmux_logins_total", protocol="imap", result="ok") == 1
    assert value(during, "mailmux_logins_total", protocol="imap", result="failed") == 1
    assert value(during, "mailmux_imap_command_seconds_count", command="SELECT") == 1
    assert value(during, "mailmux_imap_command_seconds_bucket", command="SELECT", le="+Inf") == 1
    client.logout()
    after = wait_for(address, lambda s: value(s, "mailmux_sessions", protocol="imap") == 0)
    assert value(after, "mailmux_sessions", protocol="imap") == 0
    assert value(after, "mailmux_sessions_opened_total", protocol="imap") == 2


def test_gateway_metrics_count_sessions_logins_commands_and_failovers(
    node_factory: Callable[..., NodeProcess], tmp_path: Path,
) -> None:
    nodes = [node_factory(n, extra=METRICS) for n in "ab"]
    for n in nodes:
        n.add_user(*ALICE)
        n.add_user(*BOB)
        n.start()
    gw = write_gateway_config(tmp_path / "gw.toml", [n.control for n in nodes], METRICS)
    try:
        gw.start()
        _exercise_gateway(gw, nodes)
    finally:
        gw.kill()


def _exercise_gateway(gw: GatewayProcess, nodes: list[NodeProcess]) -> None:
    address = gw.ready["metrics"]
    first = imaplib.IMAP4(*gw.imap, timeout=30)
    first.login(*ALICE)
    first.select("INBOX")
    first.logout()
    # Nodes a and b do not replicate here, so only a session with no mailbox selected can
    # move between them without losing its view.
    client = imaplib.IMAP4(*gw.imap, timeout=30)
    client.login(*ALICE)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = BOB[0], ALICE[0], "counted"
    msg.set_content("hi\n")
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(BOB[0], "wrong")
        smtp.login(*BOB)
    samples = wait_for(address, lambda s: value(
        s, "mailmux_logins_total", protocol="submission", result="ok") == 1
        and value(s, "mailmux_sessions", protocol="imap") == 1)
    assert value(samples, "mailmux_logins_total", protocol="imap", result="ok") == 2
    # smtplib tries PLAIN, then LOGIN: each refusal counts
    assert value(samples, "mailmux_logins_total", protocol="submission", result="failed") >= 1
    assert value(samples, "mailmux_sessions", protocol="imap") == 1
    assert value(samples, "mailmux_imap_command_seconds_count", command="SELECT") == 1
    assert not any(name == "mailmux_gateway_failovers_total" for name, _ in samples)

    # The node serving the session shows it in its own metrics: kill that one.
    serving = [n for n in nodes
               if value(scrape(n.ready["metrics"]), "mailmux_sessions", protocol="imap") == 1]
    assert len(serving) == 1
    serving[0].signal(signal.SIGKILL)
    assert client.noop()[0] == "OK"
    lost = str(serving[0].ready["node"])
    samples = wait_for(address, lambda s: value(
        s, "mailmux_gateway_failovers_total", node=lost) == 1)
    assert value(samples, "mailmux_gateway_failovers_total", node=lost) == 1
    client.logout()
    assert split_address(str(address))[1] > 0
