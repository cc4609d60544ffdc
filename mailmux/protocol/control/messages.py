"""Pool control messages: what a gateway asks a backend node, and what the node answers.

Each message is a frozen dataclass holding only its own fields; the envelope (timestamp, nonce,
the id of the request a reply answers) and the HMAC belong to `codec.py`. A reply is matched to
its request by the envelope's `request_id`, so the dataclasses stay plain values.

Field types are restricted to `str`, `bool`, `float` and `dict[str, float]`: the codec checks
every decoded field against these annotations, so adding a message means adding a dataclass
here and listing it in `MESSAGE_TYPES` and `REPLY_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeGuard


@dataclass(frozen=True)
class WhoRequest:
    """Does this node serve `user` (a user address or a board address)?"""

    user: str


@dataclass(frozen=True)
class WhoReply:
    node_id: str
    user: str
    serves: bool
    imap: str  # "host:port" of the node's IMAP server
    smtp: str  # "host:port" of the node's SMTP intake
    load: float  # LoadMeter.score(): lower is better
    home: str = ""  # the user's home (lease holder) as this node knows it; "" if none
    epoch: float = 0.0  # that lease's epoch (the highest answer names the current home)
    leased: bool = False  # the node runs home leases (a replicated pool): route to one node


@dataclass(frozen=True)
class LoadRequest:
    pass


@dataclass(frozen=True)
class LoadReply:
    node_id: str
    load: float
    details: dict[str, float] = field(default_factory=dict)  # LoadMeter.snapshot()


@dataclass(frozen=True)
class HealthRequest:
    pass


@dataclass(frozen=True)
class HealthReply:
    node_id: str
    ok: bool
    uptime: float  # seconds since the node started
    version: str


Request = WhoRequest | LoadRequest | HealthRequest
Reply = WhoReply | LoadReply | HealthReply
Message = Request | Reply

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (WhoRequest, WhoReply, LoadRequest, LoadReply, HealthRequest, HealthReply)
}

# The reply type each request expects; a reply of another type is a protocol error.
REPLY_TYPES: dict[type[Request], type[Reply]] = {
    WhoRequest: WhoReply,
    LoadRequest: LoadReply,
    HealthRequest: HealthReply,
}


def is_request(message: Message) -> TypeGuard[Request]:
    return type(message) in REPLY_TYPES


def reply_type(request: Request) -> type[Reply]:
    return REPLY_TYPES[type(request)]
