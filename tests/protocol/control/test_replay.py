"""ReplayCache: nonces remembered while they matter, memory bounded, no replay ever let in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.control.errors import ControlAuthError
from mailmux.protocol.control.replay import ReplayCache


def test_a_nonce_is_refused_the_second_time() -> None:
    cache = ReplayCache()
    cache.remember(b"n1", expires=130.0, now=100.0)
    with pytest.raises(ControlAuthError) as info:
        cache.remember(b"n1", expires=130.0, now=101.0)
    assert info.value.reason == "replay"


def test_expired_nonces_are_forgotten() -> None:
    cache = ReplayCache()
    cache.remember(b"old", expires=130.0, now=100.0)
    cache.remember(b"new", expires=200.0, now=170.0)
    assert len(cache) == 1
    # Its replay now falls behind the horizon and is refused as stale.
    with pytest.raises(ControlAuthError) as info:
        cache.remember(b"old", expires=130.0, now=100.0)
    assert info.value.reason == "stale"


def test_a_full_cache_forgets_the_oldest_and_refuses_anything_that_old() -> None:
    cache = ReplayCache(max_entries=2)
    cache.remember(b"a", expires=110.0, now=100.0)
    cache.remember(b"b", expires=120.0, now=100.0)
    cache.remember(b"c", expires=130.0, now=100.0)
    assert len(cache) == 2
    with pytest.raises(ControlAuthError):
        cache.remember(b"a", expires=110.0, now=100.0)


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayCache(max_entries=0)


@given(
    st.dictionaries(st.integers(0, 20), st.floats(0, 100), min_size=1),
    st.lists(st.tuples(st.integers(0, 20), st.floats(0, 5)), max_size=200),
    st.integers(1, 8),
)
def test_no_nonce_is_ever_accepted_twice_and_memory_stays_bounded(
    timestamps: dict[int, float], events: list[tuple[int, float]], size: int
) -> None:
    """A nonce always comes with the same timestamp (the MAC binds them); time only advances."""
    cache = ReplayCache(max_entries=size)
    accepted: set[int] = set()
    now = 0.0
    for nonce, step in events:
        now += step
        if nonce not in timestamps:
            continue
        try:
            cache.remember(bytes([nonce]), expires=timestamps[nonce] + 30, now=now)
        except ControlAuthError:
            continue
        assert nonce not in accepted
        accepted.add(nonce)
        assert len(cache) <= size
