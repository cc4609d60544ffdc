"""A seeded random walk through failover: a scripted client works in its INBOX through the gateway
while the node serving it is SIGKILLed (and started again) or SIGSTOPped (and continued), and every
answer is checked against a model of the mailbox.

The seed is printed with every failure; `MAILMUX_FAILOVER_SEED=N pytest -k randomized` replays
that run. The short profile runs by default; the long one is marked slow.

Faults strike between commands, the next command goes to the hit node; before each fault the test
waits until the live replicas agree, so what is checked is the gateway (view, replay, hang
detection), not how far replication had got. The short profile sends only reads to a stopped node:
a change sent to it may still be carried out when the node is continued, after the gateway
replayed it elsewhere, and two executions under one replay id are for the nodes to merge (the long
profile keeps them and finds that case).
"""

from __future__ import annotations

import imaplib
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gateway.rawimap import RawImap
from tests.gateway.test_failover import gateway_with
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess, write_config
from tests.support.ports import free_port

ALICE = ("alice@example.test", "alice-pw")
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)\r\n", re.S)


@dataclass
class Message:
    uid: int
    subject: str
    flagged: bool = False


@dataclass
class Model:
    messages: list[Message] = field(default_factory=list)


class Walk:
    def __init__(self, seed: int, gw: GatewayProcess, nodes: dict[str, NodeProcess],
                 client: RawImap) -> None:
        self.seed, self.gw, self.nodes, self.client = seed, gw, nodes, client
        self.rng = random.Random(seed)
        self.model = Model()
        self.step = 0
        self.tags = 0
        self.pending: list[Callable[[], None]] = []  # undo a fault after the next command
        self.trace: list[str] = []
        self.faults = 0

    def fail(self, what: str) -> None:
        raise AssertionError(f"seed {self.seed}, step {self.step}: {what}\nlast steps:\n"
                             + "\n".join(self.trace[-15:]))

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def command(self, text: bytes) -> list[bytes]:
        self.tags += 1
        tag = f"r{self.tags}"
        answer = self.client.command(tag, text)
        self.trace.append(f"{self.step}: {text[:60]!r} -> {[r[:70] for r in answer]!r}")
        self.check(answer[-1].startswith(tag.encode() + b" OK"), f"{text[:60]!r}: {answer[-3:]}")
        for response in answer[:-1]:
            self.check(not response.startswith(b"* BYE"), f"BYE: {response!r}")
            if (m := re.match(rb"\* (\d+) EXPUNGE", response)) is not None:
                seq = int(m.group(1))
                self.check(1 <= seq <= len(self.model.messages), f"EXPUNGE {seq} out of range")
                del self.model.messages[seq - 1]
            elif (m := re.match(rb"\* (\d+) EXISTS", response)) is not None:
                self.check(int(m.group(1)) == len(self.model.messages),
                           f"EXISTS {int(m.group(1))}, the model has {len(self.model.messages)}")
        return answer

    # operations --------------------------------------------------------------------------

    def append(self) -> None:
        subject = f"walk {self.seed} {self.step}"
        body = (f"From: w@example.test\r\nSubject: {subject}\r\n\r\n"
                f"{'x' * self.rng.randrange(10, 20000)}\r\n").encode()
        # The EXISTS for the new message may come with the APPEND or with a later command.
        self.model.messages.append(Message(0, subject))
        answer = self.command(b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
        uid = _APPENDUID.search(answer[-1])
        self.check(uid is not None, f"no APPENDUID in {answer[-1]!r}")
        assert uid is not None
        self.model.messages[-1].uid = int(uid.group(1))

    def fetch(self) -> None:
        if not self.model.messages:
            return
        seq = self.rng.randrange(1, len(self.model.messages) + 1)
        answer = self.command(b"FETCH %d (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])" % seq)
        fetched = [r for r in answer if r.startswith(b"* %d FETCH" % seq) and b"UID" in r]
        self.check(len(fetched) == 1, f"FETCH {seq}: {len(fetched)} answers")
        want = self.model.messages[seq - 1]
        self.check(b"UID %d " % want.uid in fetched[0], f"FETCH {seq}: {fetched[0][:80]!r}, "
                   f"the model says UID {want.uid}")
        self.check(f"Subject: {want.subject}".encode() in fetched[0], f"FETCH {seq} subject")
        self.check((b"\\Flagged" in fetched[0]) == want.flagged, f"FETCH {seq} flags")

    def store(self) -> None:
        if not self.model.messages:
            return
        seq = self.rng.randrange(1, len(self.model.messages) + 1)
        flag = not self.model.messages[seq - 1].flagged
        answer = self.command(b"STORE %d %sFLAGS (\\Flagged)" % (seq, b"+" if flag else b"-"))
        self.model.messages[seq - 1].flagged = flag
        shown = [r for r in answer if r.startswith(b"* %d FETCH" % seq)]
        self.check(bool(shown) and (b"\\Flagged" in shown[-1]) == flag, f"STORE {seq}: {shown}")

    def expunge(self) -> None:
        if not self.model.messages:
            return
        seq = self.rng.randrange(1, len(self.model.messages) + 1)
        uid = self.model.messages[seq - 1].uid
        self.command(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
        before = len(self.model.messages)
        self.command(b"EXPUNGE")
        self.check(len(self.model.messages) == before - 1, "EXPUNGE removed nothing")
        self.check(all(m.uid != uid for m in self.model.messages), f"UID {uid} still there")

    def search(self) -> None:
        answer = self.command(b"UID SEARCH ALL")
        found = [int(n) for r in answer if r.startswith(b"* SEARCH") for n in r.split()[2:]]
        self.check(found == [m.uid for m in self.model.messages],
                   f"UID SEARCH ALL {found}, the model has {[m.uid for m in self.model.messages]}")

    # faults --------------------------------------------------------------------------------

    def serving(self) -> NodeProcess:
        found = re.findall(rf"(?:login of {re.escape(ALICE[0])} on|now on) (\w+)", self.gw.log())
        return self.nodes[found[-1]]

    def settle(self) -> None:
        """Until every live node holds what the client's view holds."""
        want = sorted(m.uid for m in self.model.messages)
        deadline = time.monotonic() + 60
        for node in self.nodes.values():
            while _uids(node) != want:
                if time.monotonic() > deadline:
                    self.fail(f"{node.node_id} never caught up: {_uids(node)} vs {want}")
                time.sleep(0.1)  # polling with a deadline

    def fault(self) -> bool:
        """Kill or stop the serving node; True when it was stopped."""
        self.settle()
        victim = self.serving()
        if self.rng.random() < 0.5:
            self.trace.append(f"{self.step}: SIGKILL {victim.node_id}")
            victim.kill()
            self.pending.append(victim.start)
            return False
        self.trace.append(f"{self.step}: SIGSTOP {victim.node_id}")
        victim.signal(signal.SIGSTOP)
        self.pending.append(lambda: victim.signal(signal.SIGCONT))
        return True

    def run(self, steps: int, fault_rate: float, zombies: bool) -> None:
        operations = [self.append] * 3 + [self.fetch] * 3 + [self.store] * 2 + [
            self.expunge, self.search]
        reads = [self.fetch, self.search]
        self.command(b"SELECT INBOX")
        quiet = 0
        for self.step in range(steps):
            quiet += 1
            stopped = False
            if self.step > 2 and (self.rng.random() < fault_rate or quiet > 12):
                stopped = self.fault()
                self.faults += 1
                quiet = 0
            # A change sent to a stopped node sits in its socket buffer; continued, the node
            # may still carry it out after the gateway replayed it elsewhere (a "zombie"). Two
            # executions with one replay id must then be merged by the nodes; until they are,
            # the short profile sends only reads to a stopped node.
            self.rng.choice(reads if stopped and not zombies else operations)()
            while self.pending:
                self.pending.pop()()
        self.search()


def _uids(node: NodeProcess) -> list[int]:
    with imaplib.IMAP4(*node.imap, timeout=30) as imap:
        imap.login(*ALICE)
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("SEARCH", "ALL")
        return sorted(int(n) for n in data[0].split())


@pytest.fixture
def fixed_pool(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    """Three replicated nodes on fixed ports, so one started again is where the gateway
    expects it."""
    ids = "abc"
    peers = {i: free_port() for i in ids}
    nodes = {}
    for i in ids:
        links = ", ".join(f'"{j}=127.0.0.1:{peers[j]}"' for j in ids if j != i)
        node = write_config(tmp_path, i, replication=(
            f'[replication]\nlisten = "127.0.0.1:{peers[i]}"\npeers = [{links}]\n'))
        text = node.config_path.read_text()
        for key in ("listen_imap", "listen_smtp", "listen_control"):
            text = text.replace(f'{key} = "127.0.0.1:0"', f'{key} = "127.0.0.1:{free_port()}"')
        node.config_path.write_text(text)
        nodes[i] = node
    nodes["a"].add_user(*ALICE)
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.signal(signal.SIGCONT)
            node.kill()


def _walk(nodes: dict[str, NodeProcess], gateway_factory: Callable[..., GatewayProcess],
          steps: int, fault_rate: float, zombies: bool = False) -> None:
    seed = int(os.environ.get("MAILMUX_FAILOVER_SEED", random.randrange(1 << 32)))
    print(f"randomized failover walk: seed {seed}")
    deadline = time.monotonic() + 60
    for node in nodes.values():
        while True:
            try:
                _uids(node)
                break
            except (imaplib.IMAP4.error, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # polling with a deadline: alice replicating to the node
    gw = gateway_with(gateway_factory, list(nodes.values()), extra="catchup_timeout = 10")
    client = RawImap(gw.imap)
    try:
        client.login(*ALICE)
        walk = Walk(seed, gw, nodes, client)
        walk.run(steps, fault_rate, zombies)
        print(f"seed {seed}: {steps} operations, {walk.faults} faults, "
              f"{gw.log().count('failing over')} failovers")
        assert walk.faults > 0 and "failing over" in gw.log()
    finally:
        client.close()


@pytest.mark.timeout(600)
def test_randomized_failover_walk_short(
    fixed_pool: dict[str, NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    _walk(fixed_pool, gateway_factory, steps=60, fault_rate=0.08)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_randomized_failover_walk_long(
    fixed_pool: dict[str, NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    _walk(fixed_pool, gateway_factory, steps=400, fault_rate=0.08, zombies=True)
