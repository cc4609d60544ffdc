"""Authenticated peer sessions for replication (sans-IO; the caller moves the bytes).

Handshake, both sides proving they hold the pool secret without sending it:

    dialer   → {"t": "hello",   "node": A, "nonce": n1, "ts": T, "mac": H(K, hello|A|n1|T)}
    listener → {"t": "welcome", "node": B, "nonce": n2, "mac": H(K, welcome|B|n1|n2)}

K is derived from the pool secret with a label of its own, so a replication MAC can never be
replayed as a control message or the other way round. Both sides then seal every message with
the session key S = H(K, n1|n2) over a per-direction counter, so frames cannot be forged,
replayed, reordered or reflected back at their sender. A hello older than `max_skew` seconds is
refused. Frames are length-prefixed (`mailmux.protocol.control.framing`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

from mailmux.protocol.control.framing import FrameDecoder, frame

LABEL = b"mailmux replication v1"
MAC_SIZE = 32
MAX_FRAME = 256 * 1024 * 1024
MAX_SKEW = 300.0
_COUNTER = struct.Struct(">Q")

__all__ = [
    "FrameDecoder",
    "PeerAuthError",
    "Sealer",
    "check_hello",
    "check_welcome",
    "frame",
    "hello",
    "welcome",
]


class PeerAuthError(Exception):
    """A peer failed to prove it holds the pool secret, or a frame was tampered with."""


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, LABEL, hashlib.sha256).digest()


def _mac(key: bytes, *parts: bytes) -> str:
    return hmac.new(key, b"|".join(parts), hashlib.sha256).hexdigest()


def hello(secret: bytes, node: str, nonce: bytes, now: float) -> dict[str, Any]:
    ts = f"{now:.3f}"
    return {"t": "hello", "node": node, "nonce": nonce.hex(), "ts": ts,
            "mac": _mac(_key(secret), b"hello", node.encode(), nonce, ts.encode())}


def check_hello(secret: bytes, message: dict[str, Any], now: float) -> tuple[str, bytes]:
    try:
        node, nonce, ts = str(message["node"]), bytes.fromhex(message["nonce"]), message["ts"]
        expected = _mac(_key(secret), b"hello", node.encode(), nonce, str(ts).encode())
        fresh = abs(now - float(ts)) <= MAX_SKEW
    except (KeyError, ValueError, TypeError) as exc:
        raise PeerAuthError(f"malformed hello: {exc}") from exc
    if not hmac.compare_digest(expected, str(message.get("mac", ""))):
        raise PeerAuthError("hello with a wrong MAC")
    if not fresh:
        raise PeerAuthError("stale hello")
    return node, nonce


def welcome(secret: bytes, node: str, their_nonce: bytes, nonce: bytes) -> dict[str, Any]:
    return {"t": "welcome", "node": node, "nonce": nonce.hex(),
            "mac": _mac(_key(secret), b"welcome", node.encode(), their_nonce, nonce)}


def check_welcome(secret: bytes, message: dict[str, Any], my_nonce: bytes) -> tuple[str, bytes]:
    try:
        node, nonce = str(message["node"]), bytes.fromhex(message["nonce"])
    except (KeyError, ValueError, TypeError) as exc:
        raise PeerAuthError(f"malformed welcome: {exc}") from exc
    expected = _mac(_key(secret), b"welcome", node.encode(), my_nonce, nonce)
    if not hmac.compare_digest(expected, str(message.get("mac", ""))):
        raise PeerAuthError("welcome with a wrong MAC")
    return node, nonce


def plain(message: dict[str, Any]) -> bytes:
    """A handshake message as one frame (before the session key exists)."""
    return frame(json.dumps(message).encode())


@dataclass
class Sealer:
    """Seals outgoing and opens incoming frames of one session."""

    key: bytes
    dialer: bool
    sent: int = 0
    received: int = 0

    @classmethod
    def for_session(cls, secret: bytes, dialer_nonce: bytes, listener_nonce: bytes,
                    dialer: bool) -> Sealer:
        key = hmac.new(_key(secret), dialer_nonce + listener_nonce, hashlib.sha256).digest()
        return cls(key, dialer)

    def _tag(self, direction: bytes, counter: int, payload: bytes) -> bytes:
        return hmac.new(self.key, direction + _COUNTER.pack(counter) + payload,
                        hashlib.sha256).digest()

    def seal(self, message: dict[str, Any]) -> bytes:
        payload = json.dumps(message, separators=(",", ":")).encode()
        direction = b">" if self.dialer else b"<"
        self.sent += 1
        return frame(self._tag(direction, self.sent, payload) + payload)

    def open(self, data: bytes) -> dict[str, Any]:
        tag, payload = data[:MAC_SIZE], data[MAC_SIZE:]
        direction = b"<" if self.dialer else b">"
        expected = self._tag(direction, self.received + 1, payload)
        if not hmac.compare_digest(tag, expected):
            raise PeerAuthError("frame with a wrong MAC (tampered, replayed or reordered)")
        self.received += 1
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise PeerAuthError(f"sealed frame is not JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise PeerAuthError("sealed frame is not an object")
        return message
