"""ESEARCH serialising (RFC 4731/5267): ordered sets, PARTIAL windows, update lines."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.esearch import (
    Result,
    expand_set,
    ordered_set,
    partial_slice,
    update_line,
    wanted,
)

numbers = st.lists(st.integers(1, 10_000), unique=True, max_size=60)


@given(numbers)
def test_ordered_set_keeps_the_order(hits: list[int]) -> None:
    text = ordered_set(hits)
    assert (expand_set(text) if hits else []) == hits


@given(st.lists(st.integers(1, 500), unique=True, max_size=40).map(sorted))
def test_ascending_runs_fold_into_ranges(hits: list[int]) -> None:
    text = ordered_set(hits)
    # one element per maximal run of consecutive numbers
    runs = sum(1 for i, n in enumerate(hits) if i == 0 or hits[i - 1] != n - 1)
    assert len(text.split(",")) == (runs if hits else 1)


@given(numbers, st.integers(1, 80), st.integers(1, 80))
def test_partial_is_a_window_of_positions(hits: list[int], a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    window = partial_slice(hits, (low, high))
    assert window == hits[low - 1:high]
    line = Result("t", False, hits, wanted(["PARTIAL"]), sorted=True,
                  partial=(low, high)).line().decode()
    shown = line.split(f"PARTIAL ({low}:{high} ", 1)[1].rstrip(")\r\n")
    assert (expand_set(shown) if window else shown) == (window or "NIL")


def test_sort_partial_as_imaptest_expects() -> None:
    reverse_arrival = [5, 3, 4, 2, 1]  # 3 and 4 arrived together: ties stay ascending
    line = Result("x", False, reverse_arrival, wanted(["PARTIAL"]), sorted=True,
                  partial=(2, 4)).line()
    assert line == b'* ESEARCH (TAG "x") PARTIAL (2:4 3:4,2)\r\n'
    whole = Result("x", False, reverse_arrival, wanted(["PARTIAL"]), sorted=True,
                   partial=(1, 6)).line()
    assert whole.endswith(b"PARTIAL (1:6 5,3:4,2,1)\r\n")


def test_empty_return_means_all_and_update_alone_means_nothing() -> None:
    assert wanted([]) == {"ALL"}
    assert Result("u", True, [4, 5], wanted(["UPDATE"])).line() == b'* ESEARCH (TAG "u") UID\r\n'
    assert Result("u", False, [], wanted(["COUNT", "PARTIAL"]), partial=(1, 1)).line() == (
        b'* ESEARCH (TAG "u") COUNT 0 PARTIAL (1:1 NIL)\r\n')


def test_update_lines() -> None:
    assert update_line("s", False, "ADDTO", [(0, [1, 2, 4])]) == (
        b'* ESEARCH (TAG "s") ADDTO (0 1:2,4)\r\n')
    assert update_line("s", True, "REMOVEFROM", [(0, [9])]) == (
        b'* ESEARCH (TAG "s") UID REMOVEFROM (0 9)\r\n')
