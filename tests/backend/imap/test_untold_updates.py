"""A command that fails after its session took in other sessions' changes still tells them.

Found by the two-gateway stress under faults ("UID changed for sequence", "Message count
dropped"): EXPUNGE first brings the session's view up to date (another session's expunge among
it), then its own expunge is refused (`NO [UNAVAILABLE]`: the copies were not made in time). The
view had dropped the message, the EXPUNGE response went nowhere, and from then on the node and
the client numbered messages differently. A real store file and IMAP server in this process; the
refusal is made to happen as the faults made it happen.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.errors import Unavailable
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
async def test_a_refused_expunge_still_tells_the_expunges_it_took_in(tmp_path: Path) -> None:
    config = from_dict({
        "node_id": "u", "data_dir": str(tmp_path), "domains": ["example.test"],
        "pool_secret": "untold-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
    }, tmp_path)
    async with SqliteStore.open(config.db_path, "u", config.domains) as store:
        await store.add_user(USER, PASSWORD)
        for i in range(3):
            await store.append(USER, "INBOX", b"Subject: %d\r\n\r\nbody\r\n" % i)
        server = ImapServer(config, store, LoadMeter())
        host, port = (await server.start())[0]
        try:
            reader, writer = await asyncio.open_connection(host, port)
            await reader.readline()
            await _exchange(reader, writer, b"l", f'LOGIN "{USER}" "{PASSWORD}"'.encode())
            await _exchange(reader, writer, b"s", b"SELECT INBOX")
            await _exchange(reader, writer, b"d", b"UID STORE 3 +FLAGS.SILENT (\\Deleted)")
            # Another session expunges message 2 meanwhile.
            info = await store.get_mailbox(USER, "INBOX")
            await store.expunge(USER, info.id, [2])

            async def refused(*args: Any, **kwargs: Any) -> list[int]:
                raise Unavailable("not enough mail servers reachable to make this change safely")

            store.expunge = refused  # type: ignore[method-assign]
            answer = await _exchange(reader, writer, b"e", b"EXPUNGE")
            assert answer[-1].startswith(b"e NO [UNAVAILABLE]"), answer
            assert b"* 2 EXPUNGE\r\n" in answer, answer
            # Node and client agree on the numbering afterwards.
            fetched = await _exchange(reader, writer, b"f", b"FETCH 1:* (UID)")
            assert [ln for ln in fetched if ln.startswith(b"* ")] == [
                b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 3)\r\n"], fetched
            writer.close()
        finally:
            await server.close()
