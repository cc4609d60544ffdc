"""The control codec: round trips, and every kind of forgery or damage refused with our errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.control.codec import (
    MAX_MESSAGE_SIZE,
    NONCE_SIZE,
    ControlAuthError,
    ControlDecodeError,
    ReplayCache,
    _mac,  # the one way to sign arbitrary bodies (a keyed but buggy sender)
    decode,
    encode,
)
from mailmux.protocol.control.messages import (
    HealthReply,
    HealthRequest,
    LoadReply,
    LoadRequest,
    Message,
    WhoReply,
    WhoRequest,
    is_request,
)

SECRET = b"pool-secret-for-tests"
NOW = 1_700_000_000.0
NONCE = bytes(range(NONCE_SIZE))
REQUEST_ID = bytes(range(100, 100 + NONCE_SIZE))

finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=40)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(WhoRequest, user=text),
    st.builds(
        WhoReply, node_id=text, user=text, serves=st.booleans(), imap=text, smtp=text, load=finite
    ),
    st.just(LoadRequest()),
    st.builds(
        LoadReply, node_id=text, load=finite, details=st.dictionaries(text, finite, max_size=8)
    ),
    st.just(HealthRequest()),
    st.builds(HealthReply, node_id=text, ok=st.booleans(), uptime=finite, version=text),
)


def _encode(
    message: Message, *, now: float = NOW, nonce: bytes = NONCE, secret: bytes = SECRET
) -> bytes:
    request_id = None if is_request(message) else REQUEST_ID
    return encode(message, secret, now=now, nonce=nonce, request_id=request_id)


def _decode(
    data: bytes, *, now: float = NOW, cache: ReplayCache | None = None, secret: bytes = SECRET
) -> Message:
    cache = cache if cache is not None else ReplayCache()
    message, _ = decode(data, secret, now=now, replay_cache=cache)
    return message


@given(messages, st.floats(min_value=0, max_value=4e9), st.binary(min_size=16, max_size=16))
def test_any_message_round_trips(message: Message, now: float, nonce: bytes) -> None:
    data = _encode(message, now=now, nonce=nonce)
    decoded, envelope = decode(data, SECRET, now=now, replay_cache=ReplayCache())
    assert decoded == message
    assert type(decoded) is type(message)
    assert envelope.nonce == nonce and envelope.timestamp == now
    assert envelope.request_id == (nonce if is_request(message) else REQUEST_ID)


@given(messages, st.data())
def test_a_tampered_byte_is_refused_with_a_control_error(
    message: Message, data: st.DataObject
) -> None:
    encoded = bytearray(_encode(message))
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    encoded[index] ^= flip
    with pytest.raises((ControlAuthError, ControlDecodeError)):
        _decode(bytes(encoded))


@given(st.binary(max_size=MAX_MESSAGE_SIZE + 10))
def test_arbitrary_bytes_are_refused_with_a_control_error(garbage: bytes) -> None:
    with pytest.raises((ControlAuthError, ControlDecodeError)):
        _decode(garbage)


@given(messages, st.integers(0, 60))
def test_truncation_is_refused(message: Message, cut: int) -> None:
    encoded = _encode(message)
    with pytest.raises((ControlAuthError, ControlDecodeError)):
        _decode(encoded[: max(0, len(encoded) - 1 - cut)])


def test_replay_is_refused_within_the_window() -> None:
    cache = ReplayCache()
    data = _encode(WhoRequest("alice@example.test"))
    assert _decode(data, cache=cache) == WhoRequest("alice@example.test")
    with pytest.raises(ControlAuthError) as info:
        _decode(data, now=NOW + 5, cache=cache)
    assert info.value.reason == "replay"
    # A fresh nonce with the same content is a new request, not a replay.
    assert _decode(_encode(WhoRequest("alice@example.test"), nonce=b"\x01" * 16), cache=cache)


@pytest.mark.parametrize("skew", [-30.5, 30.5, 3600.0, -1e9])
def test_stale_or_future_timestamps_are_refused(skew: float) -> None:
    data = _encode(HealthRequest(), now=NOW + skew)
    with pytest.raises(ControlAuthError) as info:
        _decode(data)
    assert info.value.reason == "stale"


def test_timestamps_inside_the_window_are_accepted_and_the_window_is_configurable() -> None:
    for skew in (-29.0, 0.0, 29.0):
        assert _decode(_encode(HealthRequest(), now=NOW + skew)) == HealthRequest()
    data = _encode(HealthRequest(), now=NOW - 10)
    with pytest.raises(ControlAuthError):
        decode(data, SECRET, now=NOW, replay_cache=ReplayCache(), max_skew=5.0)


def test_wrong_secret_is_refused_as_forged() -> None:
    data = _encode(WhoRequest("alice@example.test"), secret=b"another-secret")
    with pytest.raises(ControlAuthError, match="forged or replayed") as info:
        _decode(data)
    assert info.value.reason == "bad-mac"


def test_oversized_datagram_is_refused_before_the_mac() -> None:
    data = _encode(WhoRequest("x")) + b" " * MAX_MESSAGE_SIZE
    with pytest.raises(ControlDecodeError) as info:
        _decode(data)
    assert info.value.reason == "oversized"


def test_encoding_refuses_what_could_never_decode() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        _encode(WhoRequest("x" * MAX_MESSAGE_SIZE))
    with pytest.raises(ValueError, match="nonce"):
        _encode(HealthRequest(), nonce=b"short")
    with pytest.raises(ValueError, match="request_id"):
        encode(LoadReply("a", 1.0), SECRET, now=NOW, nonce=NONCE)
    with pytest.raises(ValueError, match="request_id"):
        encode(LoadRequest(), SECRET, now=NOW, nonce=NONCE, request_id=REQUEST_ID)
    with pytest.raises(ValueError):
        _encode(LoadReply("a", float("nan")))


def _signed(envelope: dict[str, object]) -> bytes:
    """Bytes with a valid MAC around an arbitrary JSON envelope (a keyed but buggy sender)."""
    reference = _encode(HealthRequest())
    body = json.dumps(envelope).encode()
    return reference[:4] + _mac(SECRET, body) + body


def _envelope(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "type": "WhoRequest",
        "ts": NOW,
        "nonce": NONCE.hex(),
        "body": {"user": "alice@example.test"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_a_well_signed_envelope_decodes() -> None:
    assert _decode(_signed(_envelope())) == WhoRequest("alice@example.test")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "Shutdown"}, "unknown-type"),
        ({"type": 7}, "unknown-type"),
        ({"v": 2}, "malformed"),
        ({"v": True}, "malformed"),
        ({"ts": "now"}, "malformed"),
        ({"nonce": "zz" * 16}, "malformed"),
        ({"nonce": "00"}, "malformed"),
        ({"body": {"user": 5}}, "malformed"),
        ({"body": {"user": "a", "extra": 1}}, "malformed"),
        ({"body": {}}, "malformed"),
        ({"body": []}, "malformed"),
        ({"re": REQUEST_ID.hex()}, "malformed"),  # requests carry no reply id
        ({"type": "WhoReply"}, "malformed"),  # replies must carry one
        (
            {
                "type": "LoadReply",
                "re": REQUEST_ID.hex(),
                "body": {"node_id": "a", "load": 1, "details": {"x": "high"}},
            },
            "malformed",
        ),
        (
            {
                "type": "HealthReply",
                "re": REQUEST_ID.hex(),
                "body": {"node_id": "a", "ok": 1, "uptime": 1.0, "version": "1"},
            },
            "malformed",
        ),
    ],
)
def test_signed_but_malformed_envelopes_are_decode_errors(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(ControlDecodeError) as info:
        _decode(_signed(_envelope(**changes)))
    assert info.value.reason == reason


def test_signed_non_json_and_nan_are_decode_errors() -> None:
    reference = _encode(HealthRequest())
    for body in (b"\xff\xfe", b"[1, 2]", b'{"v": NaN}', b"[" * 5000):
        with pytest.raises(ControlDecodeError):
            _decode(reference[:4] + _mac(SECRET, body) + body)


def test_integers_are_accepted_for_float_fields() -> None:
    envelope = _envelope(
        type="LoadReply",
        re=REQUEST_ID.hex(),
        body={"node_id": "a", "load": 3, "details": {"sessions": 2}},
    )
    reply = _decode(_signed(envelope))
    assert reply == LoadReply("a", 3.0, {"sessions": 2.0})
    assert isinstance(reply, LoadReply) and isinstance(reply.load, float)
