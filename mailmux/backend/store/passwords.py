"""argon2id password hashes (argon2-cffi). Hashing and checking are slow on purpose, so the
store runs them in a worker thread, never on the event loop and never inside the writer."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher(type=Type.ID)
# Verified against when the user does not exist, so that a wrong user costs as much time as a
# wrong password (no user enumeration by timing).
_DUMMY = _HASHER.hash("mailmux-no-such-user")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    return await asyncio.to_thread(_verify, stored, password)
