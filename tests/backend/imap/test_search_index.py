"""SEARCH answered from the cached header columns and the FTS5 trigram index.

Whatever the index answers must be what the RFC 3501 matcher (`message/search.py`) says when
it reads every message: substring (not word) matches, case-insensitive, decoded text
(encoded words, quoted-printable, base64, 8-bit UTF-8), and NOT/OR over inexact keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailmux.backend.message.parsed import ParsedMessage
from mailmux.backend.message.search import SearchContext, matches
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.parser import parse_command
from tests.backend.imap.test_query_counts import USER, rig

pytestmark = pytest.mark.timeout(120)

MESSAGES = [
    b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: Hello World\r\n"
    b"Date: Mon, 02 Jan 2023 10:00:00 +0000\r\nMessage-ID: <one@example.org>\r\n\r\n"
    b"A plain body about kittens.\r\n",
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\nTo: bob@example.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_Berlin?=\r\nDate: Tue, 03 Jan 2023 10:00:00 +0000\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Wir wohnen in der Hauptstraße Nummer 5.\r\n".encode(),
    b"From: carol@example.net\r\nTo: bob@example.test\r\nCc: dave@example.net\r\n"
    b"Subject: quoted\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nUn caf=E9 cr=E8me, s'il vous pla=EEt\r\n",
    b"From: erin@example.net\r\nTo: bob@example.test\r\nSubject: encoded\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"U2VjcmV0IEtJVFRFTlMgaW5zaWRl\r\n--XX\r\nContent-Type: application/octet-stream\r\n\r\n"
    b"kittens in an attachment do not count\r\n--XX--\r\n",
    b"Subject: no sender at all\r\n\r\nab\r\n",
]

QUERIES = [
    "BODY kitten", "BODY ITTEN", "BODY ELL", "TEXT hello", "TEXT ELLO", "SUBJECT world",
    "SUBJECT grüße", "SUBJECT GRÜSSE", "FROM jürgen", "FROM example.net", "CC dave",
    'HEADER Message-ID "<one@"', "BODY straße", "BODY STRASSE", "BODY café", "BODY crème",
    "TEXT berlin", "BODY ab", "BODY a", "NOT BODY kittens", "OR SUBJECT hello BODY café",
    "NOT SUBJECT hello", "FROM \"\"", "NOT CC \"\"", "SENTBEFORE 3-Jan-2023",
    "SENTON 3-Jan-2023", "NOT SENTSINCE 3-Jan-2023", "LARGER 200", "2:4 BODY e",
    "UID 3:* NOT BODY nothing-like-this", "BODY \"secret kittens\"", "HEADER X-Missing \"\"",
]


def _wire(query: str) -> bytes:
    """The SEARCH arguments as a client sends them: 8-bit needles as literals."""
    if all(ord(c) < 128 for c in query):
        return query.encode()
    head, _, needle = query.rpartition(" ")
    literal = needle.encode()
    return f"{head} {{{len(literal)}+}}\r\n".encode() + literal


def _expected(query: str) -> list[int]:
    command = parse_command(b"t SEARCH CHARSET UTF-8 " + _wire(query))
    key = command.args.key  # type: ignore[union-attr]
    out = []
    for i, raw in enumerate(MESSAGES, start=1):
        meta = MessageMeta(i, "g", frozenset(), 1, len(raw), datetime(2024, 1, 1, tzinfo=UTC))
        parsed = ParsedMessage.from_bytes(raw)
        if matches(key, SearchContext(i, meta, lambda p=parsed: p, largest_seq=len(MESSAGES),
                                      largest_uid=len(MESSAGES))):
            out.append(i)
    return out


async def test_indexed_search_agrees_with_the_matcher(tmp_path: Path) -> None:
    async with rig(tmp_path, 0) as r, r.client() as a:
        for raw in MESSAGES:
            await r.store.append(USER, "INBOX", raw)
        await a.command("SELECT INBOX")
        for query in QUERIES:
            a.writer.write(b"u SEARCH CHARSET UTF-8 " + _wire(query) + b"\r\n")
            lines = []
            while not (line := await a.reader.readline()).startswith(b"u "):
                lines.append(line)
            assert line.startswith(b"u OK"), (query, line)
            found = [int(x) for line in lines if line.startswith(b"* SEARCH")
                     for x in line.split()[2:]]
            assert found == _expected(query), query
        assert _expected("BODY kitten") == [1, 4] and _expected("BODY STRASSE") == [2]

