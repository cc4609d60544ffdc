"""The gateway session's life as a table: (state, input) → next state.

Every transition the session makes goes through `step`, so an input that makes no sense in a
state (a command finishing while the session is closed, say) is a bug found at once instead of a
session quietly serving in a state it should not be in.
"""

from __future__ import annotations

from enum import Enum


class SessionState(Enum):
    CONNECTING = "connecting"  # before login: the gateway answers the client itself
    SERVING = "serving"  # logged in to a backend, relaying commands
    FAILING_OVER = "failing-over"  # the backend was lost; finding and restoring another one
    CLOSED = "closed"


class Input(Enum):
    LOGGED_IN = "logged-in"  # a backend accepted the client's credentials
    LOGIN_REFUSED = "login-refused"  # wrong credentials or no node: the client may try again
    BACKEND_LOST = "backend-lost"  # transport failure, hang or timeout of the serving node
    RESTORED = "restored"  # another node has the session's state; the command is re-sent
    VIEW_LOST = "view-lost"  # nobody can show the client its mailbox: BYE [UNAVAILABLE]
    CLIENT_GONE = "client-gone"  # the client's connection failed or closed
    LOGOUT = "logout"


class InvalidTransition(Exception):
    def __init__(self, state: SessionState, event: Input) -> None:
        super().__init__(f"session input {event.value} makes no sense while {state.value}")
        self.state, self.event = state, event


S, E = SessionState, Input
TRANSITIONS: dict[tuple[SessionState, Input], SessionState] = {
    (S.CONNECTING, E.LOGGED_IN): S.SERVING,
    (S.CONNECTING, E.LOGIN_REFUSED): S.CONNECTING,
    (S.CONNECTING, E.CLIENT_GONE): S.CLOSED,
    (S.CONNECTING, E.LOGOUT): S.CLOSED,
    (S.SERVING, E.BACKEND_LOST): S.FAILING_OVER,
    (S.SERVING, E.CLIENT_GONE): S.CLOSED,
    (S.SERVING, E.LOGOUT): S.CLOSED,
    (S.SERVING, E.VIEW_LOST): S.CLOSED,
    (S.FAILING_OVER, E.RESTORED): S.SERVING,
    # The replacement node failed too while being restored: keep failing over (bounded by
    # the caller's attempt count).
    (S.FAILING_OVER, E.BACKEND_LOST): S.FAILING_OVER,
    (S.FAILING_OVER, E.VIEW_LOST): S.CLOSED,
    (S.FAILING_OVER, E.CLIENT_GONE): S.CLOSED,
    # Closing is idempotent: the client may vanish while the session is already ending.
    (S.CLOSED, E.CLIENT_GONE): S.CLOSED,
    (S.CLOSED, E.LOGOUT): S.CLOSED,
    (S.CLOSED, E.VIEW_LOST): S.CLOSED,
}
del S, E


def step(state: SessionState, event: Input) -> SessionState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None
