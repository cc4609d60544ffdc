"""A replay id whose change arrives between the node's look-up and its write (issue 7).

Found under the two-gateway stress with faults: the gateway replayed a STORE or DELETE after a
failover; the look-up on the new node missed the id, the original's record (replicated from the
failed node) arrived before the write, and the store refused the second run — which the session
then answered `NO already done` instead of the original's answer. The store's refusal is the
race's other half of "answered as the original was": a real store file and IMAP server in this
process, with the look-up made to miss as the race makes it miss.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.imap.server import ImapServer
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore

USER, PASSWORD = "alice@example.test", "alice-pw"


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: bytes,
                    command: bytes) -> list[bytes]:
    writer.write(tag + b" " + command + b"\r\n")
    lines = []
    async with asyncio.timeout(30):
        while True:
            line = await reader.readline()
            assert line, "the server closed the connection"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


@pytest.mark.timeout(60)
async def test_a_replay_id_that_raced_in_is_answered_as_the_original(tmp_path: Path) -> None:
    config = from_dict({
        "node_id": "r", "data_dir": str(tmp_path), "domains": ["example.test"],
        "pool_secret": "replay-race-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
    }, tmp_path)
    async with SqliteStore.open(config.db_path, "r", config.domains) as store:
        await store.add_user(USER, PASSWORD)
        await store.append(USER, "INBOX", b"Subject: once\r\n\r\nonce\r\n")
        server = ImapServer(config, store, LoadMeter())
        host, port = (await server.start())[0]
        try:
            reader, writer = await asyncio.open_connection(host, port)
            await reader.readline()
            await _exchange(reader, writer, b"l", f'LOGIN "{USER}" "{PASSWORD}"'.encode())
            await _exchange(reader, writer, b"s", b"SELECT INBOX")
            first = await _exchange(reader, writer, b"a1",
                                    b"XREPLAY gw-7.r_1 STORE 1 +FLAGS (\\Flagged)")
            assert first[-1].startswith(b"a1 OK")

            async def missed(scope: str, replay_id: str) -> dict[str, Any] | None:
                return None  # the record is not here yet when the session looks

            store.replay_answer = missed  # type: ignore[method-assign]
            again = await _exchange(reader, writer, b"a2",
                                    b"XREPLAY gw-7.r_1 STORE 1 +FLAGS (\\Flagged)")
            assert again[-1].startswith(b"a2 OK STORE completed"), again
            writer.close()
        finally:
            await server.close()
