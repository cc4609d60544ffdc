"""The gateway session's state table, walked over every (state, input) pair."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.gateway.session.states import (
    TRANSITIONS,
    Input,
    InvalidTransition,
    SessionState,
    step,
)


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("event", list(Input))
def test_every_pair_is_either_a_transition_or_refused(state: SessionState, event: Input) -> None:
    if (state, event) in TRANSITIONS:
        assert step(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(InvalidTransition):
            step(state, event)


@given(st.lists(st.sampled_from(list(Input)), max_size=40))
def test_any_input_sequence_keeps_the_session_rules(events: list[Input]) -> None:
    state = SessionState.CONNECTING
    for event in events:
        try:
            after = step(state, event)
        except InvalidTransition:
            continue  # refused inputs leave the state as it was
        if state is SessionState.CLOSED:
            assert after is SessionState.CLOSED, "a closed session never comes back"
        if after is SessionState.SERVING:
            assert event in (Input.LOGGED_IN, Input.RESTORED)
        if event is Input.CLIENT_GONE:
            assert after is SessionState.CLOSED, "a client's failure ends only its session"
        state = after


def test_only_a_lost_backend_starts_a_failover() -> None:
    into_failover = {e for (s, e), after in TRANSITIONS.items()
                     if after is SessionState.FAILING_OVER and s is not after}
    assert into_failover == {Input.BACKEND_LOST}


def test_every_state_can_reach_closed() -> None:
    for state in SessionState:
        seen, frontier = {state}, [state]
        while frontier:
            s = frontier.pop()
            for (source, _), target in TRANSITIONS.items():
                if source is s and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert SessionState.CLOSED in seen
