"""Pure tests of the intake's header work: fresh GUIDs and the Received header."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailmux.backend.smtp.headers import (
    Trace,
    header_fields,
    new_guid,
    received_header,
    with_protocol,
)

WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _trace(**changes: object) -> Trace:
    values: dict[str, object] = {
        "helo": "mta.example.org",
        "peer_ip": "192.0.2.7",
        "by": "a",
        "protocol": "ESMTP",
        "guid": "0123456789abcdef0123456789abcdef",
        "recipient": "alice@example.test",
        "when": WHEN,
    }
    values.update(changes)
    return Trace(**values)  # type: ignore[arg-type]


def test_header_fields_unfold_and_stop_at_body() -> None:
    message = b"Subject: one\r\n two\r\nX-A:  b \r\n\r\nX-Mailmux-GUID: 00ff00ff00ff00ff\r\n"
    assert header_fields(message) == [(b"subject", b"one two"), (b"x-a", b"b")]


def test_fresh_guids_are_uuid4_hex_and_distinct() -> None:
    first, second = new_guid(), new_guid()
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_received_header_single_recipient() -> None:
    header = received_header(_trace()).decode()
    assert header == (
        "Received: from mta.example.org ([192.0.2.7])\r\n"
        "\tby a (mailmux) with ESMTP id 0123456789abcdef0123456789abcdef\r\n"
        "\tfor <alice@example.test>; Wed, 01 May 2024 12:30:00 +0000\r\n"
    )


def test_received_header_hides_recipients_of_multi_recipient_mail() -> None:
    header = received_header(_trace(recipient=None, peer_ip="::1")).decode()
    assert "for <" not in header
    assert "([IPv6:::1])" in header
    assert header.endswith(
        "id 0123456789abcdef0123456789abcdef;\r\n\tWed, 01 May 2024 12:30:00 +0000\r\n"
    )


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=20)))
def test_received_header_is_one_well_formed_field_whatever_the_client_says(
    helo: str, peer_ip: str | None
) -> None:
    header = received_header(_trace(helo=helo, peer_ip=peer_ip))
    lines = header.split(b"\r\n")
    assert lines[0].startswith(b"Received: from ") and lines[-1] == b""
    assert all(line.startswith(b"\t") for line in lines[1:-1])
    assert b"\n" not in header.replace(b"\r\n", b"") and b"\r" not in header.replace(b"\r\n", b"")
    assert b"(" not in lines[0].split(b" (")[0]  # the helo cannot open a comment


def test_with_protocol_keywords() -> None:
    assert with_protocol(lmtp=False, extended=False, tls=False, utf8=False) == "SMTP"
    assert with_protocol(lmtp=False, extended=True, tls=False, utf8=False) == "ESMTP"
    assert with_protocol(lmtp=False, extended=True, tls=True, utf8=False) == "ESMTPS"
    assert with_protocol(lmtp=False, extended=True, tls=True, utf8=True) == "UTF8SMTPS"
    assert with_protocol(lmtp=True, extended=True, tls=False, utf8=False) == "LMTP"
    assert with_protocol(lmtp=True, extended=True, tls=True, utf8=True) == "UTF8LMTPS"
