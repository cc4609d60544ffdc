"""Per-user home leases, PaxosLease style (sans-IO: time is passed in, messages are returned).

Every node runs an `Acceptor` and a `Proposer`. To become (or stay) a user's home, a proposer
sends one `LeaseRequest` (user, epoch, holder, duration) to every node, itself included, and
notes the local time at which it *sent* it. An acceptor grants unless it has promised an
unexpired lease to another holder, or has seen a higher epoch; a grant is a promise that lasts
`duration` from the moment the acceptor *received* the request, on the acceptor's own clock.
The proposer holds the lease once a majority granted, until `sent + duration - margin` on its
own clock.

Why two holders can never overlap: two majorities share an acceptor X. X granted the second
holder only after the first one's promise expired at X, i.e. `duration` after X *received* the
first request — which was after the first holder *sent* it, so the first holder's lease (counted
from its send time, less the drift margin) ended before X could grant again, and the second
holder's lease starts only once X's grant reached it. The margin absorbs clock *rate* drift
(`margin >= duration * 2 * drift`); clock offsets do not matter since every node measures only
its own intervals.

A restarted acceptor has forgotten its promises, so it grants nothing for one lease period
(`Acceptor(now, quiet=duration)`): every promise it made before the crash has expired by then.
That is why no promise needs to be persisted for the one-holder property. Epochs are: every
epoch an acceptor grants is first written down by the caller (`Acceptor.unsaved`, then
`restore` after a restart), so a pool that restarted, even all at once, still never grants a
lower or equal epoch to another holder, and the epoch keeps naming one holder's term for
fencing stale records ("the newer epoch keeps the UID"). A proposer starts above every epoch
its node has seen (`Proposer.seen`).

Renewal: the holder sends a new round before its lease ends (`due`); the same holder at the
same epoch is granted again, extending the promise. A new holder must use a higher epoch than
any the acceptor has seen, so the epoch names one holder's term (for fencing stale records).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LeaseRequest:
    user: str
    epoch: int
    holder: str
    duration: float
    round: int  # the proposer's round number; answers to older rounds are ignored


@dataclass(frozen=True)
class LeaseAnswer:
    user: str
    acceptor: str
    holder: str  # the proposer that asked
    round: int
    granted: bool
    current: str  # the holder the acceptor has promised to ("" if none, or restarting)
    epoch: int  # the highest epoch the acceptor has seen for the user


@dataclass(frozen=True)
class LeaseRelease:
    user: str
    holder: str
    epoch: int


@dataclass
class _Promise:
    holder: str
    epoch: int
    expires: float


class Acceptor:
    """One node's memory of the leases it promised (lost on a crash, on purpose)."""

    def __init__(self, node: str, now: float, *, quiet: float = 0.0) -> None:
        self.node = node
        self.quiet_until = now + quiet  # a restarted acceptor grants nothing for one period
        self.promises: dict[str, _Promise] = {}
        self.epochs: dict[str, int] = {}  # highest epoch seen per user
        self.terms: dict[str, str] = {}  # the holder granted that highest epoch
        # Epochs granted but not yet durable: the caller writes them down before the answer
        # leaves (and `saved` them), so a restart can never forget an epoch it granted.
        self.unsaved: dict[str, tuple[int, str]] = {}

    def restore(self, terms: dict[str, tuple[int, str]]) -> None:
        """The epochs (and their holders) written down before a restart."""
        for user, (epoch, holder) in terms.items():
            if epoch > self.epochs.get(user, 0):
                self.epochs[user], self.terms[user] = epoch, holder

    def saved(self, user: str, epoch: int, holder: str) -> None:
        if self.unsaved.get(user) == (epoch, holder):
            del self.unsaved[user]

    def on_request(self, request: LeaseRequest, now: float) -> LeaseAnswer:
        user = request.user
        seen = self.epochs.get(user, 0)
        promise = self.promises.get(user)
        if promise is not None and promise.expires <= now:
            promise = None
        granted = self._grantable(request, promise, seen, now)
        if granted:
            self.promises[user] = _Promise(request.holder, request.epoch, now + request.duration)
            if (request.epoch, request.holder) != (seen, self.terms.get(user)):
                self.unsaved[user] = (request.epoch, request.holder)
            self.epochs[user] = seen = request.epoch
            self.terms[user] = request.holder
            promise = self.promises[user]
        current = promise.holder if promise is not None else ""
        return LeaseAnswer(user, self.node, request.holder, request.round, granted, current, seen)

    def _grantable(self, request: LeaseRequest, promise: _Promise | None, seen: int,
                   now: float) -> bool:
        if now < self.quiet_until or request.duration <= 0:
            return False
        if promise is not None:
            # Renewal by the holder of the live promise (in its term, or a later one of its own).
            return promise.holder == request.holder and request.epoch >= promise.epoch
        if request.epoch == seen:
            # A late renewal after the promise lapsed here, with nobody else granted since.
            return self.terms.get(request.user) == request.holder
        return request.epoch > seen

    def on_release(self, release: LeaseRelease, now: float) -> None:
        promise = self.promises.get(release.user)
        if promise is not None and (promise.holder, promise.epoch) == (release.holder,
                                                                       release.epoch):
            del self.promises[release.user]

    def holder(self, user: str, now: float) -> tuple[str, int] | None:
        """Whom this acceptor believes holds `user` (a hint for routing, not a guarantee)."""
        promise = self.promises.get(user)
        if promise is None or promise.expires <= now:
            return None
        return promise.holder, promise.epoch


@dataclass
class _Claim:
    epoch: int = 0
    round: int = 0
    sent: float = 0.0  # local time the current round was sent
    grants: set[str] = field(default_factory=set)
    valid_until: float = float("-inf")
    seen_epoch: int = 0  # the highest epoch any acceptor told us about
    hint: tuple[str, int] | None = None  # (holder, epoch) another node holds, per the refusals
    hint_at: float = float("-inf")
    answered: set[str] = field(default_factory=set)
    grant_counts: int = 0  # rounds that reached a majority (for tests and status)


class Proposer:
    """One node's claims on user leases."""

    def __init__(self, node: str, nodes: list[str], duration: float, margin: float) -> None:
        if node not in nodes:
            raise ValueError(f"{node!r} is not one of the pool's nodes {nodes!r}")
        if not 0 <= margin < duration:
            raise ValueError("the drift margin must be shorter than the lease")
        self.node = node
        self.nodes = sorted(set(nodes))
        self.duration = duration
        self.margin = margin
        self.claims: dict[str, _Claim] = {}
        self.floor: dict[str, int] = {}  # epochs this node saw before a restart

    def seen(self, user: str, epoch: int) -> None:
        """An epoch this node has seen (e.g. restored from disk): claim only above it."""
        self.floor[user] = max(self.floor.get(user, 0), epoch)

    @property
    def majority(self) -> int:
        return len(self.nodes) // 2 + 1

    def claim(self, user: str, now: float, *, same_term: bool = False
              ) -> list[tuple[str, LeaseRequest]]:
        """Start a round for `user`: a renewal if we hold it, else a claim at a higher epoch.
        `same_term` renews at our epoch even after the lease lapsed: acceptors grant that only
        if nobody was granted a higher epoch meanwhile, so a majority of grants shows no other
        term began between (see Acceptor._grantable)."""
        state = self.claims.setdefault(user, _Claim())
        if not self.holds(user, now) and not (same_term and state.epoch > 0):
            state.epoch = max(state.epoch, state.seen_epoch, self.floor.get(user, 0)) + 1
        state.round += 1
        state.sent = now
        state.grants = set()
        state.answered = set()
        request = LeaseRequest(user, state.epoch, self.node, self.duration, state.round)
        return [(node, request) for node in self.nodes]

    def on_answer(self, answer: LeaseAnswer, now: float) -> None:
        state = self.claims.get(answer.user)
        if state is None or answer.holder != self.node:
            return
        state.seen_epoch = max(state.seen_epoch, answer.epoch)
        if answer.current and answer.current != self.node:
            state.hint, state.hint_at = (answer.current, answer.epoch), now
        if answer.round != state.round or answer.acceptor not in self.nodes:
            return
        state.answered.add(answer.acceptor)
        if not answer.granted:
            return
        state.grants.add(answer.acceptor)
        if len(state.grants) == self.majority:
            state.valid_until = max(state.valid_until, state.sent + self.duration - self.margin)
            state.grant_counts += 1
            state.hint = None

    def holds(self, user: str, now: float) -> bool:
        state = self.claims.get(user)
        return state is not None and now < state.valid_until

    def epoch(self, user: str) -> int:
        state = self.claims.get(user)
        return 0 if state is None else state.epoch

    def valid_until(self, user: str) -> float:
        state = self.claims.get(user)
        return float("-inf") if state is None else state.valid_until

    def due(self, user: str, now: float) -> bool:
        """Time to renew: a third of the lease left (two renewal rounds fit before expiry)."""
        state = self.claims.get(user)
        if state is None or not self.holds(user, now):
            return False
        renew_at = state.valid_until - (self.duration - self.margin) * 2 / 3
        return now >= renew_at and now - state.sent >= (self.duration - self.margin) / 6

    def hint(self, user: str, now: float) -> tuple[str, int] | None:
        """Another holder named by a refusal within the last lease period."""
        state = self.claims.get(user)
        if state is None or state.hint is None or now - state.hint_at > self.duration:
            return None
        return state.hint

    def release(self, user: str) -> list[tuple[str, LeaseRelease]]:
        """Give the lease up at once (other nodes may grant it before it would expire)."""
        state = self.claims.get(user)
        if state is None:
            return []
        state.valid_until = float("-inf")
        state.round += 1  # late grants of the released round must not revive it
        message = LeaseRelease(user, self.node, state.epoch)
        return [(node, message) for node in self.nodes]
