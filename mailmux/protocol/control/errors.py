"""Why a control message was refused.

Two families, because callers treat them differently: an `ControlAuthError` means someone
without the pool secret (or a replayer) is talking to us and is worth a security warning; a
`ControlDecodeError` means the bytes are not a control message at all. Each error carries a short
machine-readable `reason` that the control server uses as its drop-counter key.
"""

from __future__ import annotations


class ControlError(Exception):
    """A control message could not be accepted."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ControlAuthError(ControlError):
    """Forged or replayed: bad MAC, stale timestamp or a nonce seen before."""

    reason = "auth"


class ControlDecodeError(ControlError):
    """Malformed: oversized, truncated, not JSON, wrong shape or an unknown message type."""

    reason = "malformed"
