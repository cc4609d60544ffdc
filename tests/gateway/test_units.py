"""Pure parts of the gateway: literal rewriting, GUID stamping, selection, health, responses."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.gateway.health import HealthBook
from mailmux.gateway.literals import non_synchronising
from mailmux.gateway.message_id import strip_guid_header
from mailmux.gateway.responses import read_response
from mailmux.gateway.selection import Candidate, order


def test_sync_literals_become_non_synchronising() -> None:
    raw = b'a1 APPEND INBOX (\\Seen) {5}\r\nhello\r\n'
    assert non_synchronising(raw) == b'a1 APPEND INBOX (\\Seen) {5+}\r\nhello\r\n'


def test_literal_content_is_never_rewritten() -> None:
    body = b"x {3}\r\nabc"
    raw = b"a1 APPEND INBOX {%d}\r\n%s\r\n" % (len(body), body)
    assert non_synchronising(raw) == b"a1 APPEND INBOX {%d+}\r\n%s\r\n" % (len(body), body)


def test_login_literals_and_binary_literals() -> None:
    raw = b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n"
    assert non_synchronising(raw) == b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n"
    binary = b"a APPEND X ~{2}\r\n\x00\x01\r\n"
    assert non_synchronising(binary) == b"a APPEND X ~{2+}\r\n\x00\x01\r\n"


@given(st.lists(st.binary(max_size=40), max_size=4))
def test_rewriting_keeps_every_literal_byte(literals: list[bytes]) -> None:
    raw = b"t1 X" + b"".join(b" {%d}\r\n%s" % (len(lit), lit) for lit in literals) + b"\r\n"
    expected = b"t1 X" + b"".join(b" {%d+}\r\n%s" % (len(lit), lit) for lit in literals)
    assert non_synchronising(raw) == expected + b"\r\n"


def test_client_guid_fields_are_removed_with_their_continuations() -> None:
    message = b"X-Mailmux-GUID: 0123456789abcdef0123\r\n folded\r\nSubject: hi\r\n\r\nbody\r\n"
    assert strip_guid_header(message) == b"Subject: hi\r\n\r\nbody\r\n"


def test_guid_header_in_body_is_kept() -> None:
    message = b"Subject: x\r\n\r\nX-Mailmux-GUID: in the body\r\n"
    assert strip_guid_header(message) == message


def _candidates(*loads: float) -> list[Candidate]:
    return [
        Candidate(f"n{i}", ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3), load, 0.01 * i)
        for i, load in enumerate(loads)
    ]


def test_least_load_and_first_responder() -> None:
    cands = _candidates(5.0, 1.0, 3.0)
    assert [c.node_id for c in order(cands, "least-load")] == ["n1", "n2", "n0"]
    assert [c.node_id for c in order(cands, "first-responder")] == ["n0", "n1", "n2"]
    with pytest.raises(ValueError):
        order(cands, "random")


def test_p2c_never_picks_the_most_loaded_of_three_and_spreads() -> None:
    cands = _candidates(1.0, 1.0, 9.0)
    rng = random.Random(7)
    firsts = Counter(order(cands, "p2c", rng)[0].node_id for _ in range(3000))
    assert firsts["n2"] == 0
    assert 0.4 < firsts["n0"] / firsts["n1"] < 2.5


def test_health_quarantines_after_two_failures_and_backs_off() -> None:
    now = [100.0]
    book = HealthBook(clock=lambda: now[0])
    book.failed("a", "refused")
    assert not book.is_quarantined("a")
    book.failed("a", "refused")
    assert book.is_quarantined("a") and book.due_for_probe() == []
    now[0] += 1.0
    assert book.due_for_probe() == ["a"]
    book.probe_failed("a", "still down")
    now[0] += 1.0
    assert book.due_for_probe() == []  # backoff doubled to 2 s
    now[0] += 1.0
    assert book.due_for_probe() == ["a"]
    book.succeeded("a")
    assert not book.is_quarantined("a") and book.last_error("a") == "still down"


async def test_read_response_with_literals() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"* 1 FETCH (BODY[] {5}\r\nab\r\nc FLAGS (\\Seen))\r\na1 OK done\r\n")
    reader.feed_eof()
    first = await read_response(reader, 100)
    assert first.raw == b"* 1 FETCH (BODY[] {5}\r\nab\r\nc FLAGS (\\Seen))\r\n"
    second = await read_response(reader, 100)
    assert second.tagged_as(b"a1") and second.status == b"OK"
    with pytest.raises(ConnectionResetError):
        await read_response(reader, 100)
