"""Validation of user ids, board names and mailbox names, with errors clients understand."""

from __future__ import annotations

import re

from mailmux.backend.errors import InvalidUser, NotPermitted
from mailmux.backend.store.interface import BOARD_PREFIX

MAX_NAME = 255
DELIMITER = "/"
_LOCAL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_BOARD = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def user_id(address: str, domains: tuple[str, ...]) -> str:
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL.match(local) or domain not in domains:
        raise InvalidUser(
            f"{address!r} is not an e-mail address in this node's domains ({', '.join(domains)})"
        )
    return address


def board_name(name: str) -> str:
    name = name.strip().lower()
    if not _BOARD.match(name):
        raise InvalidUser(f"board name {name!r}: use a-z, 0-9, '.', '_', '-' (max 64)")
    return name


def mailbox_name(name: str) -> str:
    if name.upper() == "INBOX":
        return "INBOX"
    if not name or len(name) > MAX_NAME:
        raise NotPermitted("mailbox names have 1 to 255 characters", code="CANNOT")
    if any(ord(c) < 0x20 or c in "*%\x7f" for c in name):
        raise NotPermitted("mailbox names may not contain *, % or control characters",
                           code="CANNOT")
    parts = name.split(DELIMITER)
    if any(not p for p in parts):
        raise NotPermitted("empty hierarchy level in mailbox name", code="CANNOT")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return DELIMITER.join(parts)


def is_board(name: str) -> bool:
    return name.startswith(BOARD_PREFIX)
