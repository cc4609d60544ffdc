"""The session's read timeout is one watchdog timer, pushed forward lazily (session.py,
`_read_in_time`): a session that keeps talking outlives the watchdog's first firing, and one
that falls silent is still logged out, with a BYE."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.imap.server import ImapServer
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "alice@example.test", "alice-pw"


async def test_idle_timeout_is_pushed_forward_by_commands_then_logs_out(tmp_path: Path) -> None:
    config = from_dict({
        "node_id": "w", "data_dir": str(tmp_path), "domains": ["example.test"],
        "pool_secret": "watchdog-test-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0", "idle_timeout": "2s",
    }, tmp_path)
    async with SqliteStore.open(config.db_path, "w", config.domains) as store:
        await store.add_user(USER, PASSWORD)
        server = ImapServer(config, store, LoadMeter())
        address = (await server.start())[0]
        try:
            reader, writer = await asyncio.open_connection(*address)
            async with asyncio.timeout(60):
                assert (await reader.readline()).startswith(b"* OK")
                writer.write(f'a LOGIN "{USER}" "{PASSWORD}"\r\n'.encode())
                assert (await reader.readline()).startswith(b"a OK")
                loop = asyncio.get_running_loop()
                talk_until = loop.time() + 5  # past the first deadlines the watchdog was set at
                n = 0
                while loop.time() < talk_until:
                    n += 1
                    writer.write(f"n{n} NOOP\r\n".encode())
                    assert (await reader.readline()).startswith(f"n{n} OK".encode())
                    await asyncio.sleep(0.25)  # pacing the client, well inside the 2 s timeout
                line = await reader.readline()  # now silent: the node hangs up
                assert line.startswith(b"* BYE") and b"autologout" in line, line
                assert await reader.readline() == b""
            writer.close()
        finally:
            await server.close()
