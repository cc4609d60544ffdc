"""Gateway keys in the control codec and the XGATEWAY link proof (sans-IO)."""

from __future__ import annotations

import pytest

from mailmux.protocol.control.codec import ControlAuthError, ReplayCache, decode, encode
from mailmux.protocol.control.keys import GatewayKey, GatewayKeyError, Keyring, parse_key
from mailmux.protocol.control.messages import HealthRequest, LoadReply
from mailmux.protocol.imap import gatewaylink

POOL = b"pool-secret-for-tests"
KEY = GatewayKey("laptop", b"laptop-secret-0123456789")
NOW = 1_700_000_000.0
NONCE = bytes(range(16))
RING = Keyring(POOL, {"laptop": KEY.secret}.get)


def _decode(data: bytes, credential: object) -> tuple[object, object]:
    return decode(data, credential, now=NOW, replay_cache=ReplayCache())  # type: ignore[arg-type]


def test_a_gateway_key_message_names_its_key_and_verifies_with_the_keyring() -> None:
    data = encode(HealthRequest(), KEY, now=NOW, nonce=NONCE)
    message, envelope = _decode(data, RING)
    assert message == HealthRequest() and envelope.key == "laptop"  # type: ignore[attr-defined]
    _, pooled = _decode(encode(HealthRequest(), POOL, now=NOW, nonce=NONCE), RING)
    assert pooled.key is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("credential", [
    GatewayKey("laptop", b"another-secret-0123456789"),  # a guessed secret
    GatewayKey("desktop", KEY.secret),  # a name the node does not know (or revoked)
    POOL,  # a pool-secret MAC cannot be stretched over a gateway message
])
def test_wrong_or_unknown_keys_are_refused(credential: GatewayKey | bytes) -> None:
    data = encode(HealthRequest(), credential, now=NOW, nonce=NONCE)
    if isinstance(credential, bytes):
        data = b"MMG1\x06laptop" + data[4:]
    with pytest.raises(ControlAuthError):
        _decode(data, RING)


def test_replies_must_come_with_the_gateways_own_key() -> None:
    reply = encode(LoadReply("a", 1.0), POOL, now=NOW, nonce=NONCE, request_id=NONCE)
    with pytest.raises(ControlAuthError):
        _decode(reply, KEY)  # a pool-signed answer is not what this gateway asked with
    good = encode(LoadReply("a", 1.0), KEY, now=NOW, nonce=NONCE, request_id=NONCE)
    assert _decode(good, KEY)[0] == LoadReply("a", 1.0)
    with pytest.raises(ControlAuthError):
        _decode(good, POOL)


def test_key_files_are_checked() -> None:
    assert parse_key(" laptop:" + "s" * 20 + "\n") == GatewayKey("laptop", b"s" * 20)
    for bad in ("laptop", "laptop:short", "bad name:" + "s" * 20, ":" + "s" * 20):
        with pytest.raises(GatewayKeyError):
            parse_key(bad)


def test_link_proofs() -> None:
    line = gatewaylink.command(b"g0", KEY, NOW, NONCE)
    proof = gatewaylink.verify(line, RING, NOW + 1)
    assert proof is not None and proof.name == "laptop" and proof.tag == "g0"
    assert gatewaylink.verify(line, RING, NOW + gatewaylink.MAX_SKEW + 1) is None  # stale
    forged = gatewaylink.command(b"g0", GatewayKey("laptop", b"guess-0123456789abc"), NOW, NONCE)
    assert gatewaylink.verify(forged, RING, NOW) is None
    revoked = Keyring(POOL, lambda name: None)
    assert gatewaylink.verify(line, revoked, NOW) is None
    assert gatewaylink.parse(b"a1 LOGIN alice secret\r\n") is None
