"""Which commands each IMAP state accepts (RFC 3501 section 3 and the extensions' RFCs)."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
NOT_AUTHENTICATED = ANY_STATE | {"STARTTLS", "LOGIN", "AUTHENTICATE"}
AUTHENTICATED = ANY_STATE | {
    "ENABLE", "NAMESPACE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
    "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "IDLE", "NOTIFY",
    "COMPRESS",
}
SELECTED = AUTHENTICATED | {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "SORT", "THREAD", "FETCH", "STORE",
    "COPY", "MOVE", "CANCELUPDATE",
}

ALLOWED: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: NOT_AUTHENTICATED,
    State.AUTHENTICATED: frozenset(AUTHENTICATED),
    State.SELECTED: frozenset(SELECTED),
    State.LOGOUT: frozenset(),
}

# RFC 3501 7.4.1: EXPUNGE responses may not be sent while these (non-UID) commands run, because
# the client's sequence numbers must stay valid for them.
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})

CAPABILITIES: tuple[str, ...] = (
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
    "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE", "ESEARCH", "BINARY",
    "MULTIAPPEND", "STATUS=SIZE", "SORT", "SORT=DISPLAY",
    "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "ESORT",
    "WITHIN", "UTF8=ACCEPT", "LIST-EXTENDED", "LIST-STATUS",
    "SEARCHRES", "CONTEXT=SEARCH", "CONTEXT=SORT", "QRESYNC",
    "CATENATE", "NOTIFY", "COMPRESS=DEFLATE",
)
# Gateway-only (mailmux.protocol.imap.replay); the gateway never shows it to clients.
CAPABILITIES += ("XREPLAY",)
