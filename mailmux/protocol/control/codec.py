"""The wire encoding of pool control messages, authenticated with the pool secret.

How this works: a message is one datagram (UDP) or one length-prefixed frame (TCP, see
`framing.py`) laid out as

    MAGIC (4 bytes "MMC1") | HMAC-SHA256 (32 bytes) | JSON body (UTF-8)

The JSON body is compact: {"v": 1, "type": "WhoRequest", "ts": <unix time>, "nonce": <32 hex>,
"re": <32 hex, replies only>, "body": {<the dataclass fields>}}. The MAC covers the magic and the
exact body bytes, so no canonical JSON is needed, and it is checked before the JSON is parsed, so
the parser only ever sees bytes written by a holder of the secret. The MAC key is derived from the
pool secret with a fixed label, so control traffic and any other use of the same secret (peer
replication) can never be confused for each other.

A request's id is its nonce; a reply carries that id back in "re". `decode` hands both out as
`Envelope.request_id`, so a client compares the reply's `request_id` with its request's.

A message is refused (in this order) if it is larger than 8 KiB, lacks the magic, has a bad MAC,
is not well-formed JSON of the expected shape, names an unknown type, is timestamped more than
`max_skew` seconds away from `now`, or reuses a nonce (`ReplayCache`). No I/O happens here: the
caller supplies the clock and the randomness.

A gateway signs with its gateway key (`keys.py`) instead of the pool secret; its messages are

    GMAGIC (4 bytes "MMG1") | name length (1 byte) | key name | HMAC-SHA256 | JSON body

with the MAC over everything before and after it, keyed by a key derived from the gateway key
with a label of its own. A node decodes with a `Keyring` (the pool secret and a lookup of live
gateway keys) and learns from `Envelope.key` which gateway key signed, or None for the pool
secret; it answers with the same credential.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from mailmux.protocol.control.errors import ControlAuthError, ControlDecodeError, ControlError
from mailmux.protocol.control.framing import FrameDecoder, frame
from mailmux.protocol.control.keys import Credential, GatewayKey, Keyring
from mailmux.protocol.control.messages import (
    MESSAGE_TYPES,
    REPLY_TYPES,
    Message,
    is_request,
)
from mailmux.protocol.control.replay import ReplayCache

__all__ = [
    "DEFAULT_MAX_SKEW",
    "MAX_MESSAGE_SIZE",
    "NONCE_SIZE",
    "ControlAuthError",
    "ControlDecodeError",
    "ControlError",
    "Envelope",
    "FrameDecoder",
    "ReplayCache",
    "decode",
    "encode",
    "frame",
]

MAGIC = b"MMC1"
GMAGIC = b"MMG1"
VERSION = 1
MAX_MESSAGE_SIZE = 8 * 1024
NONCE_SIZE = 16
DEFAULT_MAX_SKEW = 30.0
_MAC_SIZE = hashlib.sha256().digest_size
_HEADER_SIZE = len(MAGIC) + _MAC_SIZE
_KEY_LABEL = b"mailmux control v1"
_GATEWAY_LABEL = b"mailmux gateway control v1"
_ENVELOPE_KEYS = {"v", "type", "ts", "nonce", "body"}


@dataclass(frozen=True)
class Envelope:
    """What came with a decoded message besides its fields."""

    timestamp: float
    nonce: bytes
    request_id: bytes  # a request's own nonce, or the one a reply answers
    key: str | None = None  # the gateway key that signed it; None: the pool secret


def encode(
    message: Message,
    secret: Credential,
    *,
    now: float,
    nonce: bytes,
    request_id: bytes | None = None,
) -> bytes:
    """Serialise and sign `message`. Replies must pass the request's `request_id`.

    Raises ValueError for arguments that could never decode (wrong nonce size, a reply without
    request_id, non-finite numbers, a result above MAX_MESSAGE_SIZE).
    """
    _check_encode_args(message, nonce, request_id)
    envelope: dict[str, Any] = {
        "v": VERSION,
        "type": type(message).__name__,
        "ts": now,
        "nonce": nonce.hex(),
        "body": _body_of(message),
    }
    if request_id is not None:
        envelope["re"] = request_id.hex()
    body = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
    data = _signed(secret, body)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"control message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def decode(
    data: bytes,
    secret: Credential | Keyring,
    *,
    now: float,
    replay_cache: ReplayCache,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> tuple[Message, Envelope]:
    """Verify and parse one message; raises ControlAuthError or ControlDecodeError only."""
    body, key = _verified_body(data, secret)
    raw = _parse_json(body)
    message, envelope = _from_envelope(raw)
    envelope = dataclasses.replace(envelope, key=key)
    if not math.isfinite(envelope.timestamp) or abs(now - envelope.timestamp) > max_skew:
        raise ControlAuthError("forged or replayed: timestamp outside the window", reason="stale")
    replay_cache.remember(envelope.nonce, envelope.timestamp + max_skew, now)
    return message, envelope


# --- encoding helpers ---------------------------------------------------------------------


def _check_encode_args(message: Message, nonce: bytes, request_id: bytes | None) -> None:
    if type(message).__name__ not in MESSAGE_TYPES:
        raise ValueError(f"not a control message: {message!r}")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if is_request(message) != (request_id is None):
        raise ValueError("replies need the request's request_id; requests take none")
    if request_id is not None and len(request_id) != NONCE_SIZE:
        raise ValueError(f"request_id must be {NONCE_SIZE} bytes")


def _body_of(message: Message) -> dict[str, Any]:
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    try:
        # The peer checks the same rules; failing here names the culprit instead.
        _check_fields(type(message), body)
    except ControlDecodeError as exc:
        raise ValueError(f"cannot encode {message!r}: {exc}") from exc
    return body


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(_control_key(secret), MAGIC + body, hashlib.sha256).digest()


def _gateway_prefix(name: str) -> bytes:
    raw = name.encode()
    return GMAGIC + bytes([len(raw)]) + raw


def _gateway_mac(key: GatewayKey, prefix: bytes, body: bytes) -> bytes:
    return hmac.new(_gateway_control_key(key.secret), prefix + body, hashlib.sha256).digest()


@cache
def _gateway_control_key(secret: bytes) -> bytes:
    return hmac.new(secret, _GATEWAY_LABEL, hashlib.sha256).digest()


def _signed(credential: Credential, body: bytes) -> bytes:
    if isinstance(credential, GatewayKey):
        prefix = _gateway_prefix(credential.name)
        return prefix + _gateway_mac(credential, prefix, body) + body
    return MAGIC + _mac(credential, body) + body


@cache
def _control_key(secret: bytes) -> bytes:
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


# --- decoding helpers ---------------------------------------------------------------------


def _verified_body(data: bytes, secret: Credential | Keyring) -> tuple[bytes, str | None]:
    """The authenticated body and the gateway key that signed it (None: the pool secret)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise ControlDecodeError(
            f"{len(data)} bytes exceeds {MAX_MESSAGE_SIZE}", reason="oversized"
        )
    if data.startswith(GMAGIC):
        return _verified_gateway_body(data, secret)
    if len(data) < _HEADER_SIZE or not data.startswith(MAGIC):
        raise ControlDecodeError("not a mailmux control message")
    pool_secret = secret.pool_secret if isinstance(secret, Keyring) else secret
    if isinstance(pool_secret, GatewayKey):
        raise ControlAuthError("signed with the pool secret, expected our gateway key",
                               reason="bad-mac")
    mac, body = data[len(MAGIC) : _HEADER_SIZE], data[_HEADER_SIZE:]
    if not hmac.compare_digest(mac, _mac(pool_secret, body)):
        raise ControlAuthError("forged or replayed: bad MAC", reason="bad-mac")
    return body, None


def _verified_gateway_body(data: bytes, secret: Credential | Keyring) -> tuple[bytes, str]:
    size = data[len(GMAGIC)] if len(data) > len(GMAGIC) else 0
    end = len(GMAGIC) + 1 + size
    if size == 0 or len(data) < end + _MAC_SIZE:
        raise ControlDecodeError("truncated gateway-key message")
    prefix, mac, body = data[:end], data[end : end + _MAC_SIZE], data[end + _MAC_SIZE :]
    name = prefix[len(GMAGIC) + 1 :].decode("ascii", "replace")
    if isinstance(secret, Keyring):
        key = secret.gateway_key(name)
    elif isinstance(secret, GatewayKey) and secret.name == name:
        key = secret
    else:
        key = None
    if key is None:
        raise ControlAuthError(f"gateway key {name!r} unknown or revoked", reason="unknown-key")
    if not hmac.compare_digest(mac, _gateway_mac(key, prefix, body)):
        raise ControlAuthError("forged or replayed: bad MAC", reason="bad-mac")
    return body, name


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ControlDecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ControlDecodeError("body is not a JSON object")
    return raw


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _from_envelope(raw: dict[str, Any]) -> tuple[Message, Envelope]:
    if raw.get("v") != VERSION or isinstance(raw.get("v"), bool):
        raise ControlDecodeError(f"unsupported version {raw.get('v')!r}")
    type_name = raw.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ControlDecodeError(f"unknown message type {raw.get('type')!r}", reason="unknown-type")
    expected = _ENVELOPE_KEYS if cls in REPLY_TYPES else _ENVELOPE_KEYS | {"re"}
    if set(raw) != expected:
        raise ControlDecodeError(f"envelope keys {sorted(raw)}, expected {sorted(expected)}")
    nonce = _hex_id(raw["nonce"], "nonce")
    envelope = Envelope(
        timestamp=_number(raw["ts"], "ts"),
        nonce=nonce,
        request_id=_hex_id(raw["re"], "re") if "re" in raw else nonce,
    )
    body = raw["body"]
    if not isinstance(body, dict):
        raise ControlDecodeError("body is not a JSON object")
    return cls(**_check_fields(cls, body)), envelope


def _hex_id(value: object, key: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * NONCE_SIZE:
        raise ControlDecodeError(f"{key}: expected {2 * NONCE_SIZE} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ControlDecodeError(f"{key}: expected {2 * NONCE_SIZE} hex digits") from exc


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlDecodeError(f"{key}: expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise ControlDecodeError(f"{key}: expected a finite number")
    return number


def _check_fields(cls: type[Message], body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields, checked against `cls`'s annotations (ints widened to float)."""
    hints = _FIELD_HINTS[cls.__name__]
    if set(body) != set(hints):
        raise ControlDecodeError(f"{cls.__name__}: fields {sorted(body)}, expected {sorted(hints)}")
    return {name: _field_value(body[name], hint, name) for name, hint in hints.items()}


def _field_hints(cls: type[Message]) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_FIELD_HINTS = {name: _field_hints(cls) for name, cls in MESSAGE_TYPES.items()}


def _field_value(value: object, hint: object, name: str) -> object:
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float:
        return _number(value, name)
    if hint == dict[str, float] and isinstance(value, dict):
        return {_key(k, name): _number(v, f"{name}.{k}") for k, v in value.items()}
    raise ControlDecodeError(f"{name}: expected {hint}, got {type(value).__name__}")


def _key(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ControlDecodeError(f"{name}: keys must be strings")
    return value
