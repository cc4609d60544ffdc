"""Header work done on every message the intake accepts: a fresh GUID per message and the
trace (`Received:`) header. Pure functions on bytes, tested without sockets.

Every message gets a fresh uuid4 GUID, whatever its header claims: replays are recognised by
replay id (`XREPLAY=`), so identical bytes are always separate messages.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

# What RFC 5321's Domain / address-literal syntax allows in a HELO argument; anything else
# (a client can send any bytes) is written as "unknown" so it cannot forge header structure.
_HELO = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")


def new_guid() -> str:
    return uuid.uuid4().hex


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, unfolded value) of each header field, stopping at the blank line."""
    fields: list[tuple[bytes, bytes]] = []
    for raw in message.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip().lower(), value.strip()))
    return fields


def with_protocol(*, lmtp: bool, extended: bool, tls: bool, utf8: bool) -> str:
    """The `with` keyword of RFC 5321 4.4, as registered by RFC 3848 and RFC 6531."""
    if utf8:
        name = "UTF8LMTP" if lmtp else "UTF8SMTP"
    else:
        name = "LMTP" if lmtp else ("ESMTP" if extended else "SMTP")
    return name + ("S" if tls else "")


@dataclass(frozen=True)
class Trace:
    """What one Received header records about one accepted transaction."""

    helo: str | None
    peer_ip: str | None
    by: str
    protocol: str
    guid: str
    recipient: str | None  # only for single-recipient mail: never reveal Bcc recipients
    when: datetime  # timezone-aware


def received_header(trace: Trace) -> bytes:
    helo = trace.helo if trace.helo and _HELO.fullmatch(trace.helo) else "unknown"
    lines = [
        f"Received: from {helo} ({_address_literal(trace.peer_ip)})",
        f"\tby {trace.by} (mailmux) with {trace.protocol} id {trace.guid}",
    ]
    date = format_datetime(trace.when)
    if trace.recipient is not None:
        lines.append(f"\tfor <{trace.recipient}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _address_literal(peer_ip: str | None) -> str:
    try:
        ip = ipaddress.ip_address(peer_ip or "")
    except ValueError:
        return "unknown"
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"
