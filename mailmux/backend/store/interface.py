"""The typed interface every mail store implements (the SQLite one is `sqlite.py`).

Mailboxes are addressed by `(owner, name)`; boards are mailboxes whose owner is
`BOARD_OWNER` and whose IMAP name is `Boards/<board>`, readable by every user, with
per-user \\Seen. Messages carry a pool-wide GUID; appending a GUID a mailbox already holds is
a no-op that returns the existing UID (this is how replayed submissions stay single).

Every mutation commits (fsync'd) before its coroutine returns, writes one or more change-log
records in the same transaction, and then wakes `ChangeFeed` listeners of the mailbox.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mailmux.protocol.imap.commands import SearchKey

BOARD_OWNER = "@boards"
BOARD_PREFIX = "Boards/"
# Reads of at most this many rows by key run on the event loop: cheaper than a thread hop.
INLINE_ROWS = 32
DEFAULT_SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


@dataclass(frozen=True)
class MailboxInfo:
    id: int
    owner: str
    name: str  # IMAP name ("INBOX", "Sent", "Boards/news" for boards)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool
    messages: int
    unseen: int  # for the asking user (boards: per-user \Seen)
    size: int  # total octets

    @property
    def is_board(self) -> bool:
        return self.owner == BOARD_OWNER


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    guid: str
    flags: frozenset[str]  # as the asking user sees them (boards: per-user \Seen)
    modseq: int
    size: int
    internaldate: datetime  # timezone-aware


@dataclass(frozen=True)
class SelectState:
    info: MailboxInfo
    uids: array[int]  # ascending; an array, not a list: 8 bytes a message at 100k messages
    first_unseen: int | None  # its UID
    keywords: tuple[str, ...]
    # `uids` is the store's kept array, shared with other views and the store: copy it before
    # changing it in place (most views never change it: the copy waits for new mail)
    shared: bool = False


@dataclass(frozen=True)
class ViewChanges:
    highestmodseq: int
    changed: tuple[tuple[int, frozenset[str], int], ...]  # (uid, flags, modseq), new or changed
    expunged: tuple[int, ...]


@dataclass(frozen=True)
class AppendResult:
    mailbox_id: int
    uidvalidity: int
    uid: int
    guid: str
    duplicate: bool  # the GUID was already there; nothing new was stored


@dataclass(frozen=True)
class FlagChange:
    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True)
class StoreResult:
    changed: tuple[FlagChange, ...]
    failed_unchanged_since: tuple[int, ...]  # UIDs refused by UNCHANGEDSINCE (CONDSTORE)


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int
    pairs: tuple[tuple[int, int], ...]  # (source uid, destination uid)


@dataclass(frozen=True)
class ChangeRecord:
    """One change-log entry (the replication issue ships these)."""

    origin: str
    seq: int
    hlc: int
    kind: str  # user.add, user.passwd, user.del, mailbox.create, mailbox.rename,
    # mailbox.delete, mailbox.subscribe, message.add, message.flags, message.expunge, board.add
    payload: dict[str, object]


class MailStore(Protocol):
    # called after every commit (replication's and NOTIFY sessions' wake-up)
    commit_hooks: list[Callable[[], None]]
    # called with (mailbox id, UIDVALIDITY) → highest UID of messages a commit took in from peers
    arrival_hooks: list[Callable[[dict[tuple[int, int], int]], None]]

    # users ------------------------------------------------------------------------
    async def add_user(self, user: str, password: str) -> None: ...
    async def set_password(self, user: str, password: str) -> None: ...
    async def delete_user(self, user: str) -> None: ...
    async def list_users(self) -> list[str]: ...
    async def has_user(self, user: str) -> bool: ...
    async def uid_tops(self) -> dict[tuple[int, int], int]: ...
    async def authenticate(self, user: str, password: str) -> bool: ...

    # boards -----------------------------------------------------------------------
    async def add_board(self, name: str) -> None: ...
    async def list_boards(self) -> list[str]: ...
    async def has_board(self, name: str) -> bool: ...

    # mailboxes (boards appear to every user as "Boards/<name>") ---------------------
    async def list_mailboxes(self, user: str) -> list[MailboxInfo]: ...
    async def get_mailbox(self, user: str, name: str) -> MailboxInfo: ...
    async def create_mailbox(
        self, user: str, name: str, special_use: str | None = None
    ) -> None: ...
    async def delete_mailbox(self, user: str, name: str) -> None: ...
    async def rename_mailbox(self, user: str, old: str, new: str) -> None: ...
    async def set_subscribed(self, user: str, name: str, subscribed: bool) -> None: ...
    # every subscribed name, a deleted mailbox's included (RFC 3501 6.3.6)
    async def subscriptions(self, user: str) -> list[str]: ...

    # messages ---------------------------------------------------------------------
    async def append(
        self,
        user: str,
        mailbox: str,
        body: bytes,
        flags: Sequence[str] = (),
        internaldate: datetime | None = None,
        guid: str | None = None,
    ) -> AppendResult: ...
    async def deliver(
        self, recipients: Sequence[str], body: bytes, guid: str
    ) -> list[AppendResult]: ...
    async def messages(self, user: str, mailbox_id: int) -> list[MessageMeta]: ...
    async def body(self, mailbox_id: int, uid: int) -> bytes: ...
    # a selected session's reads, each a constant number of statements whatever the size
    async def select_state(self, user: str, name: str) -> SelectState: ...
    async def changes_since_modseq(
        self, user: str, mailbox_id: int, modseq: int
    ) -> ViewChanges: ...
    async def fetch_rows(
        self, user: str, mailbox_id: int, uids: Sequence[int], with_body: bool = False
    ) -> list[tuple[MessageMeta, bytes | None]]: ...
    async def flag_rows(
        self, user: str, mailbox_id: int, uids: Sequence[int]
    ) -> list[tuple[int, str, int]]: ...
    async def flag_lines(
        self, mailbox_id: int, uids: Sequence[int], first_seq: int, fields: tuple[str, ...],
        recent: frozenset[int] = frozenset(),
    ) -> bytes | None: ...
    async def uids_with_flag(self, user: str, mailbox_id: int, flag: str) -> list[int]: ...
    async def search(
        self, user: str, mailbox_id: int, key: SearchKey, largest_uid: int
    ) -> list[tuple[int, int, bool]]: ...
    async def store_flags(
        self,
        user: str,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Sequence[str],
        unchanged_since: int | None = None,
        source: object = None,
    ) -> StoreResult: ...
    async def expunge(self, user: str, mailbox_id: int, uids: Sequence[int]) -> list[int]: ...
    async def copy(
        self, user: str, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult: ...
    async def move(
        self, user: str, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult: ...

    # replay ids (store/replay.py): the answer recorded for a gateway replay id, if any
    async def replay_answer(self, scope: str, replay_id: str) -> dict[str, Any] | None: ...

    # sync points on a node that is not the user's home first catch up (replication/barrier.py)
    async def read_barrier(self, user: str) -> None: ...

    # change log -------------------------------------------------------------------
    async def changes_since(
        self, origin: str, seq: int, limit: int = 1000
    ) -> list[ChangeRecord]: ...

    # change feed: a queue that receives the mailbox id after every committed change
    def listen(self, mailbox_id: int) -> asyncio.Queue[int]: ...
    def unlisten(self, mailbox_id: int, queue: asyncio.Queue[int]) -> None: ...
