"""Pure replication rules: importance, batch window, and the merge property."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from mailmux.backend.config import CopiesConfig
from mailmux.replication.importance import copies_required, importance
from mailmux.replication.merge import Expunge, FlagChange, MessageState, join, merge
from mailmux.replication.window import BatchWindow


def test_importance_from_headers() -> None:
    assert importance(b"Importance: High\r\n\r\nx") == "high"
    assert importance(b"X-Priority: 2 (High)\r\n\r\nx") == "high"
    assert importance(b"X-Priority: 3\r\n\r\nx") == "normal"
    assert importance(b"Precedence: bulk\r\n\r\nx") == "bulk"
    assert importance(b"Precedence: list\r\nImportance: high\r\n\r\nx") == "high"
    assert importance(b"Subject: x\r\n\r\nImportance: high\r\n") == "normal"
    copies = CopiesConfig(high=None, normal=2, bulk=1)
    assert copies_required(b"Importance: high\r\n\r\n", copies, live_nodes=3) == 3
    assert copies_required(b"Subject: x\r\n\r\n", copies, live_nodes=3) == 2
    assert copies_required(b"Precedence: bulk\r\n\r\n", copies, live_nodes=3) == 1


def test_batch_window_with_an_injected_clock() -> None:
    night = BatchWindow(start=2 * 60, end=5 * 60, backlog_threshold=100)
    assert not night.may_ship(datetime(2026, 11, 24, 12, 0), backlog=5)
    assert night.may_ship(datetime(2026, 11, 24, 2, 30), backlog=5)
    assert not night.may_ship(datetime(2026, 11, 24, 5, 0), backlog=5)
    assert night.may_ship(datetime(2026, 11, 24, 12, 0), backlog=100)
    wrapping = BatchWindow(start=22 * 60, end=60, backlog_threshold=10)
    assert wrapping.inside(datetime(2026, 11, 24, 23, 59))
    assert wrapping.inside(datetime(2026, 11, 25, 0, 30))
    assert not wrapping.inside(datetime(2026, 11, 25, 1, 0))


changes = st.lists(
    st.one_of(
        st.builds(
            FlagChange,
            st.sampled_from(["\\Seen", "\\Flagged", "$Label1"]),
            st.booleans(),
            st.tuples(st.integers(0, 20), st.sampled_from(["a", "b", "c"])),
        ),
        st.builds(Expunge, st.tuples(st.integers(0, 20), st.sampled_from(["a", "b", "c"]))),
    ),
    max_size=12,
)


@given(changes, st.randoms())
def test_any_interleaving_converges(history: list[FlagChange | Expunge], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert merge(history) == merge(shuffled)


@given(changes, changes)
def test_replicas_that_exchange_state_agree(left: list[FlagChange | Expunge],
                                            right: list[FlagChange | Expunge]) -> None:
    a, b = merge(left), merge(right)
    assert join(a, b) == join(b, a) == merge(left + right)
    assert join(a, a) == a


def test_expunge_wins_over_a_later_flag_change() -> None:
    state = merge([Expunge((1, "a")), FlagChange("\\Seen", True, (5, "b"))])
    assert state.expunged and state.visible_flags() == {"\\Seen"}
    assert merge([FlagChange("\\Seen", True, (1, "a")), FlagChange("\\Seen", False, (1, "b"))]) \
        == MessageState({"\\Seen": ((1, "b"), False)})
