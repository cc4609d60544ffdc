"""Incremental view updates across two sessions on one mailbox (RFC 3501 5.2, 7.4.1).

The view catches up from the change feed by MODSEQ instead of re-reading the mailbox: these
check that what each client is told — EXPUNGE (only where allowed, numbered after the ones
before), FETCH FLAGS for the other session's changes (not for its own), EXISTS — stays right.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backend.imap.test_query_counts import rig

pytestmark = pytest.mark.timeout(120)


def untagged(lines: list[bytes]) -> list[bytes]:
    return [line.rstrip(b"\r\n") for line in lines if line.startswith(b"* ")]


async def test_expunge_flags_and_exists_reach_the_other_session_in_order(tmp_path: Path) -> None:
    async with rig(tmp_path, 6) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        await a.command("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        await a.command("STORE 5 +FLAGS.SILENT (\\Flagged)")
        expunged = untagged(await a.command("EXPUNGE"))
        assert expunged == [b"* 2 EXPUNGE", b"* 3 EXPUNGE"]
        await a.command('APPEND INBOX {5+}\r\nhello')
        # A non-UID FETCH may not announce expunges: message 4 (uid 4) is gone, so it is left
        # out, and the numbers stay as the client knows them.
        fetched = untagged(await b.command("FETCH 1:6 (UID)"))
        assert not any(b"EXPUNGE" in x for x in fetched)
        assert fetched[:2] == [b"* 5 FETCH (FLAGS (\\Flagged \\Seen) UID 5)", b"* 7 EXISTS"]
        assert [x.split(b" FETCH")[0] for x in fetched if b"(UID" in x] == [
            b"* 1", b"* 3", b"* 5", b"* 6"]
        news = untagged(await b.command("NOOP"))
        assert news == [b"* 2 EXPUNGE", b"* 3 EXPUNGE"]
        assert untagged(await b.command("NOOP")) == []
        assert untagged(await b.command("FETCH 3:5 (UID)")) == [
            b"* 3 FETCH (UID 5)", b"* 4 FETCH (UID 6)", b"* 5 FETCH (UID 7)"]


async def test_flag_changes_are_reported_to_the_other_session_only(tmp_path: Path) -> None:
    async with rig(tmp_path, 3) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        stored = untagged(await a.command("STORE 2 +FLAGS (\\Flagged)"))
        # a selected first: it owns \\Recent (RFC 3501 2.3.2)
        assert stored == [b"* 2 FETCH (FLAGS (\\Flagged \\Recent \\Seen))"]
        assert untagged(await a.command("NOOP")) == []  # its own change, told once
        assert untagged(await b.command("NOOP")) == [
            b"* 2 FETCH (FLAGS (\\Flagged \\Seen) UID 2)"]
        # b changes it back; a hears of it, b does not hear its own change again
        await b.command("UID STORE 2 -FLAGS.SILENT (\\Flagged)")
        assert untagged(await b.command("NOOP")) == []
        assert untagged(await a.command("NOOP")) == [
            b"* 2 FETCH (FLAGS (\\Recent \\Seen) UID 2)"]


async def test_expunges_wait_for_a_command_that_allows_them(tmp_path: Path) -> None:
    async with rig(tmp_path, 4) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        await a.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        await a.command("EXPUNGE")
        await a.command("STORE 3 +FLAGS.SILENT (\\Answered)")  # uid 4 is now number 3
        # b: STORE by sequence number must not see the expunge (RFC 3501 7.4.1) ...
        lines = untagged(await b.command("STORE 4 +FLAGS (\\Draft)"))
        assert not any(b"EXPUNGE" in x for x in lines)
        assert b"* 4 FETCH (FLAGS (\\Answered \\Draft) UID 4)" in lines or \
            b"* 4 FETCH (FLAGS (\\Answered \\Draft))" in lines
        # ... and gets it, once, at the next command that may tell it
        assert untagged(await b.command("NOOP"))[:1] == [b"* 1 EXPUNGE"]
        assert untagged(await b.command("NOOP")) == []
        assert untagged(await b.command("FETCH 3 (UID FLAGS)")) == [
            b"* 3 FETCH (UID 4 FLAGS (\\Answered \\Draft))"]


async def test_select_counters_follow_appends_flags_and_expunges(tmp_path: Path) -> None:
    async with rig(tmp_path, 9) as r, r.client() as a:
        lines = untagged(await a.command("SELECT INBOX"))
        assert b"* 9 EXISTS" in lines and b"* OK [UNSEEN 1] first unseen" in lines
        await a.command("STORE 1,4 +FLAGS.SILENT (\\Seen $Important)")
        await a.command("STORE 2 +FLAGS.SILENT (\\Deleted)")
        await a.command("EXPUNGE")
        lines = untagged(await a.command("SELECT INBOX"))
        assert b"* 8 EXISTS" in lines
        assert b"* OK [UNSEEN 6] first unseen" in lines  # uid 7 is the 6th message now
        assert any(x.startswith(b"* FLAGS (") and b"$Important" in x for x in lines)
        status = untagged(await a.command("STATUS INBOX (MESSAGES UNSEEN)"))
        assert status == [b'* STATUS "INBOX" (MESSAGES 8 UNSEEN 1)']


async def test_select_after_changes_sees_what_a_fresh_read_sees(tmp_path: Path) -> None:
    """SELECT reuses the UIDs the last SELECT read, caught up by MODSEQ: appends, expunges and
    flag changes by another session in between must all show."""
    async with rig(tmp_path, 8) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        await b.command("STORE 2,5 +FLAGS.SILENT (\\Deleted)")
        await b.command("EXPUNGE")
        await b.command("STORE 1 +FLAGS.SILENT (\\Flagged)")
        await r.store.append("alice@example.test", "INBOX", b"Subject: new\r\n\r\nx\r\n")
        lines = untagged(await a.command("SELECT INBOX"))
        assert b"* 7 EXISTS" in lines
        fetched = untagged(await a.command("FETCH 1:* (UID)"))
        assert [int(x.split(b"UID ")[1].rstrip(b")")) for x in fetched] == [1, 3, 4, 6, 7, 8, 9]


async def test_fetch_all_flags_shows_recent_only_to_the_session_that_owns_it(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, 5) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        mine = untagged(await a.command("FETCH 1:* (FLAGS)"))
        theirs = untagged(await b.command("FETCH 1:* (FLAGS)"))
        assert len(mine) == len(theirs) == 5
        assert all(b"\\Recent" in x for x in mine)
        assert not any(b"\\Recent" in x for x in theirs)
        assert mine[1] == b"* 2 FETCH (FLAGS (\\Recent \\Seen))"
        assert theirs[1] == b"* 2 FETCH (FLAGS (\\Seen))"


async def test_views_sharing_the_kept_uids_each_hear_of_new_mail(tmp_path: Path) -> None:
    """A SELECT of a mailbox nobody changed since the last one shares the store's kept UID
    array instead of copying it: the first view to extend it must take its own copy, or the
    other views (and the next SELECT) would already hold the new UID and never be told."""
    async with rig(tmp_path, 5) as r, r.client() as a, r.client() as b, r.client() as c:
        await a.command("SELECT INBOX")  # reads the UIDs and keeps them
        await b.command("SELECT INBOX")  # these two share the kept array
        await c.command("SELECT INBOX")
        await a.command('APPEND INBOX {5+}\r\nhello')
        assert b"* 6 EXISTS" in untagged(await b.command("NOOP"))
        assert b"* 6 EXISTS" in untagged(await c.command("NOOP"))
        assert untagged(await c.command("FETCH 6 (UID)")) == [b"* 6 FETCH (UID 6)"]
        async with r.client() as d:
            assert b"* 6 EXISTS" in untagged(await d.command("SELECT INBOX"))
            assert untagged(await d.command("FETCH 1:* (UID)"))[-1] == b"* 6 FETCH (UID 6)"
