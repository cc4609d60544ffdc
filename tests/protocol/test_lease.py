"""The home lease state machine against a model network: lost, duplicated and reordered
messages, crashing and restarting nodes, clocks running at slightly different rates.

Safety: at no instant do two nodes both believe they hold a valid lease for one user.
Epochs: a new holder's epoch is above every earlier holder's, across restarts of any number of
nodes (acceptors write an epoch down before granting it, and reload it when they restart).
Liveness: once the network delivers again, a live majority elects a holder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mailmux.protocol.lease import (
    Acceptor,
    LeaseAnswer,
    LeaseRelease,
    LeaseRequest,
    Proposer,
)

DURATION = 1.0
DRIFT = 0.01
MARGIN = 0.05  # >= DURATION * 2 * DRIFT
USERS = ["u1"]  # users are independent; one keeps the search sharp

Message = LeaseRequest | LeaseAnswer | LeaseRelease


@dataclass
class Node:
    name: str
    rate: float
    offset: float
    acceptor: Acceptor | None = None
    proposer: Proposer | None = None
    disk: dict[str, tuple[int, str]] = field(default_factory=dict)  # survives crashes

    def local(self, now: float) -> float:
        return self.offset + self.rate * now


class LeaseModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.wire: list[tuple[str, Message]] = []
        self.terms: dict[str, list[tuple[int, str]]] = {u: [] for u in USERS}  # held, in order

    @initialize(count=st.sampled_from([3, 5]),
                rates=st.lists(st.sampled_from([1 - DRIFT, 1.0, 1 + DRIFT]), min_size=5,
                               max_size=5),
                offsets=st.lists(st.floats(-100, 100), min_size=5, max_size=5))
    def start(self, count: int, rates: list[float], offsets: list[float]) -> None:
        names = [f"n{i}" for i in range(count)]
        for i, name in enumerate(names):
            self.nodes[name] = Node(name, rates[i], offsets[i])
        for node in self.nodes.values():
            self._boot(node, quiet=0.0)

    def _boot(self, node: Node, quiet: float) -> None:
        local = node.local(self.now)
        node.acceptor = Acceptor(node.name, local, quiet=quiet)
        node.proposer = Proposer(node.name, list(self.nodes), DURATION, MARGIN)
        node.acceptor.restore(node.disk)
        for user, (epoch, _holder) in node.disk.items():
            node.proposer.seen(user, epoch)

    def _live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.proposer is not None]

    def _send(self, sender: Node, messages: list[tuple[str, Message]]) -> None:
        self.wire.extend(messages)

    # rules -------------------------------------------------------------------------------

    @rule(data=st.data(), user=st.sampled_from(USERS), same_term=st.booleans())
    def claim(self, data: st.DataObject, user: str, same_term: bool) -> None:
        live = self._live()
        if not live:
            return
        node = data.draw(st.sampled_from(live))
        assert node.proposer is not None
        # same_term: a lapsed holder renewing its old term (granted only if none began since)
        self._send(node, node.proposer.claim(user, node.local(self.now), same_term=same_term))

    @rule()
    def renew_due(self) -> None:
        for node in self._live():
            assert node.proposer is not None
            for user in USERS:
                if node.proposer.due(user, node.local(self.now)):
                    self._send(node, node.proposer.claim(user, node.local(self.now)))

    @rule(data=st.data(), user=st.sampled_from(USERS))
    def release(self, data: st.DataObject, user: str) -> None:
        live = self._live()
        if live:
            node = data.draw(st.sampled_from(live))
            assert node.proposer is not None
            self._send(node, node.proposer.release(user))

    @precondition(lambda self: bool(self.wire))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.wire) - 1))  # any order: reordering
        self._deliver(self.wire.pop(index))

    @rule(kind=st.sampled_from([LeaseRequest, LeaseAnswer, LeaseRelease]))
    def deliver_kind(self, kind: type) -> None:
        """Deliver everything of one kind: e.g. requests arrive, answers are held up."""
        ready = [item for item in self.wire if isinstance(item[1], kind)]
        self.wire = [item for item in self.wire if not isinstance(item[1], kind)]
        for item in ready:
            self._deliver(item)

    @rule()
    def deliver_all(self) -> None:
        while self.wire:
            self._deliver(self.wire.pop(0))

    @precondition(lambda self: bool(self.wire))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.wire.pop(data.draw(st.integers(0, len(self.wire) - 1)))

    @precondition(lambda self: bool(self.wire))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.wire.append(self.wire[data.draw(st.integers(0, len(self.wire) - 1))])

    @rule(data=st.data())
    def cut(self, data: st.DataObject) -> None:
        """Everything in flight to one node is lost (its link broke)."""
        name = data.draw(st.sampled_from(sorted(self.nodes)))
        self.wire = [(dest, m) for dest, m in self.wire if dest != name]

    @rule(dt=st.floats(0.0, 1.5) | st.sampled_from([0.3, 0.6, 0.96, 1.0, 1.04]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        live = self._live()
        if live:
            node = data.draw(st.sampled_from(live))
            node.acceptor = node.proposer = None
            self.wire = [(dest, m) for dest, m in self.wire if dest != node.name]

    @rule()
    def crash_all(self) -> None:
        """The whole pool goes down (power cut) and comes back."""
        for node in self.nodes.values():
            node.acceptor = node.proposer = None
        self.wire.clear()
        for node in self.nodes.values():
            self._boot(node, quiet=DURATION)

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        down = [n for n in self.nodes.values() if n.proposer is None]
        if down:
            self._boot(data.draw(st.sampled_from(down)), quiet=DURATION)

    def _deliver(self, item: tuple[str, Message]) -> None:
        dest, message = item
        node = self.nodes[dest]
        if node.acceptor is None or node.proposer is None:
            return  # sent to a dead node: lost
        local = node.local(self.now)
        if isinstance(message, LeaseRequest):
            answer = node.acceptor.on_request(message, local)
            for user, (epoch, holder) in list(node.acceptor.unsaved.items()):
                node.disk[user] = (epoch, holder)  # written (fsync'd) before the answer leaves
                node.acceptor.saved(user, epoch, holder)
            self.wire.append((message.holder, answer))
        elif isinstance(message, LeaseAnswer):
            node.proposer.on_answer(answer=message, now=local)
        else:
            node.acceptor.on_release(message, local)

    # properties --------------------------------------------------------------------------

    @invariant()
    def at_most_one_holder(self) -> None:
        # Holding starts only when an answer is delivered and only ends as time passes, so
        # checking after every step checks every instant.
        for user in USERS:
            holders = [n.name for n in self._live()
                       if n.proposer is not None and n.proposer.holds(user, n.local(self.now))]
            assert len(holders) <= 1, (user, holders, self.now)

    @invariant()
    def a_new_term_has_a_higher_epoch(self) -> None:
        for user in USERS:
            for node in self._live():
                assert node.proposer is not None
                if not node.proposer.holds(user, node.local(self.now)):
                    continue
                term = (node.proposer.epoch(user), node.name)
                held = self.terms[user]
                if held and held[-1] == term:
                    continue
                # A holder's own same-term renewal after a lapse is the same term again.
                assert term not in held or term == held[-1], (term, held)
                assert all(epoch < term[0] for epoch, _ in held), (term, held)
                held.append(term)

    @precondition(lambda self: len(self._live()) * 2 > len(self.nodes))
    @rule(data=st.data(), user=st.sampled_from(USERS))
    def a_live_majority_elects(self, data: st.DataObject, user: str) -> None:
        while self.wire:  # the network heals: everything in flight arrives
            self._deliver(self.wire.pop(0))
        self.now += 2 * DURATION * (1 + DRIFT)  # quiet periods and old promises run out
        node = data.draw(st.sampled_from(self._live()))
        assert node.proposer is not None
        for _attempt in range(3):  # a refusal teaches the proposer the epoch to beat
            self._send(node, node.proposer.claim(user, node.local(self.now)))
            while self.wire:
                self._deliver(self.wire.pop(0))
            if node.proposer.holds(user, node.local(self.now)):
                return
        raise AssertionError(f"{node.name} got no lease for {user} from a live majority")


TestLeaseModel = LeaseModel.TestCase
TestLeaseModel.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_renewing_holder_keeps_its_lease_and_others_are_refused() -> None:
    nodes = ["a", "b", "c"]
    acceptors = {n: Acceptor(n, 0.0) for n in nodes}
    a, b = Proposer("a", nodes, 2.0, 0.2), Proposer("b", nodes, 2.0, 0.2)

    def run(proposer: Proposer, now: float) -> None:
        for dest, request in proposer.claim("u", now):
            proposer.on_answer(acceptors[dest].on_request(request, now), now)

    run(a, 0.0)
    assert a.holds("u", 0.0) and a.epoch("u") == 1
    for step in range(1, 20):
        now = step * 0.5
        if a.due("u", now):
            run(a, now)
        run(b, now)
        assert a.holds("u", now) and not b.holds("u", now)
        assert b.hint("u", now) == ("a", 1)
    # The holder stops renewing (it died): the other one gets it once the promises ran out.
    run(b, 10.0 + 2.0)
    assert b.holds("u", 12.0) and b.epoch("u") > 1


def test_a_restarted_acceptor_is_quiet_for_one_lease_period() -> None:
    acceptor = Acceptor("a", 100.0, quiet=2.0)
    request = LeaseRequest("u", 1, "b", 2.0, 1)
    assert not acceptor.on_request(request, 101.9).granted
    assert acceptor.on_request(request, 102.0).granted


def test_a_bad_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        Proposer("a", ["a"], 1.0, 1.0)


def test_a_restarted_acceptor_cannot_make_a_second_holder() -> None:
    nodes = ["a", "b", "c"]
    acceptors = {n: Acceptor(n, 0.0) for n in nodes}
    a, c = Proposer("a", nodes, 2.0, 0.2), Proposer("c", nodes, 2.0, 0.2)
    for dest, request in a.claim("u", 0.0):
        if dest != "c":  # c's copy is lost: a holds with a and b
            a.on_answer(acceptors[dest].on_request(request, 0.0), 0.0)
    assert a.holds("u", 0.5)
    acceptors["b"] = Acceptor("b", 0.5, quiet=2.0)  # b crashed and restarted: forgot a
    for dest, request in c.claim("u", 0.5):
        c.on_answer(acceptors[dest].on_request(request, 0.5), 0.5)
    assert not c.holds("u", 0.5)


def test_a_restarted_pool_gives_the_next_home_a_higher_epoch() -> None:
    nodes = ["a", "b", "c"]
    disks: dict[str, dict[str, tuple[int, str]]] = {n: {} for n in nodes}

    def boot(now: float) -> dict[str, Acceptor]:
        acceptors = {}
        for n in nodes:
            acceptors[n] = Acceptor(n, now, quiet=2.0)
            acceptors[n].restore(disks[n])
        return acceptors

    def run(proposer: Proposer, acceptors: dict[str, Acceptor], now: float) -> None:
        for dest, request in proposer.claim("u", now):
            answer = acceptors[dest].on_request(request, now)
            for user, (epoch, holder) in list(acceptors[dest].unsaved.items()):
                disks[dest][user] = (epoch, holder)
                acceptors[dest].saved(user, epoch, holder)
            proposer.on_answer(answer, now)

    acceptors = boot(-2.0)
    a = Proposer("a", nodes, 2.0, 0.2)
    for _ in range(2):
        run(a, acceptors, 0.0)
        a.release("u")
        for n in nodes:
            acceptors[n].promises.clear()
    run(a, acceptors, 0.0)
    assert a.holds("u", 0.0) and a.epoch("u") == 3
    assert {d["u"] for d in disks.values()} == {(3, "a")}
    # Every node restarts; b claims once the quiet period is over.
    acceptors = boot(10.0)
    b = Proposer("b", nodes, 2.0, 0.2)
    b.seen("u", disks["b"]["u"][0])
    run(b, acceptors, 12.0)
    assert b.holds("u", 12.0) and b.epoch("u") == 4
    # A proposer that forgot (no floor) learns from the refusals and still goes higher.
    c = Proposer("c", nodes, 2.0, 0.2)
    run(c, acceptors, 20.0)
    assert not c.holds("u", 20.0)
    run(c, acceptors, 20.0)
    assert c.holds("u", 20.0) and c.epoch("u") == 5
