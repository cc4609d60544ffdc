"""The pool-wide failed-login book (backend/login_failures.py), with a fake clock."""

from __future__ import annotations

from mailmux.backend.login_failures import FORGET_AFTER, PoolLoginFailures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_lock_after_the_threshold_and_the_lock_ends() -> None:
    clock = Clock()
    book = PoolLoginFailures(3, 20.0, clock=clock)
    for _ in range(2):
        book.failed("alice")
    assert book.locked("alice") == 0.0
    book.failed("alice")
    assert book.locked("alice") == 20.0
    clock.now += 19.0
    assert 0 < book.locked("alice") <= 1.0
    clock.now += 1.5
    assert book.locked("alice") == 0.0
    book.failed("alice")  # one more failure after the lock: locked again at once
    assert book.locked("alice") == 20.0
    book.succeeded("alice")
    assert book.locked("alice") == 0.0 and book.count("alice") == 0


def test_counts_travel_to_peers_and_add_up() -> None:
    a = PoolLoginFailures(3, 20.0, peers=["b"])
    b = PoolLoginFailures(3, 20.0, peers=["a"])
    woken = []
    a.on_change = lambda: woken.append(1)
    a.failed("alice")
    a.failed("alice")
    assert woken and a.take("b") == {"alice": 2}
    assert a.take("b") == {}
    b.heard("a", {"alice": 2})
    b.failed("alice")
    assert b.locked("alice") > 0  # two on a, one on b: one lockout


def test_a_success_travels_as_a_reset_before_later_failures() -> None:
    a = PoolLoginFailures(3, 20.0, peers=["b"])
    b = PoolLoginFailures(3, 20.0, peers=["a"])
    b.heard("a", {"alice": 2})
    a.failed("alice")
    a.succeeded("alice")
    a.failed("alice")
    update = a.take("b")
    assert update == {"alice": -2}  # forget, then one more
    b.heard("a", update)
    assert b.count("alice") == 1


def test_an_update_lost_with_the_link_is_sent_again() -> None:
    a = PoolLoginFailures(3, 20.0, peers=["b"])
    a.failed("alice")
    update = a.take("b")
    a.give_back("b", update)
    assert a.take("b") == {"alice": 1}


def test_garbage_from_a_peer_is_ignored_and_old_counts_forgotten() -> None:
    clock = Clock()
    b = PoolLoginFailures(3, 20.0, clock=clock)
    b.heard("a", {"alice": True, "bob": "x", "carol": 5})  # type: ignore[dict-item]
    assert b.count("alice") == 0 and b.count("bob") == 0 and b.count("carol") == 5
    clock.now += FORGET_AFTER + 1
    assert b.count("carol") == 0 and b.locked("carol") == 0.0
