"""BODY and BODYSTRUCTURE (RFC 3501 7.4.2) from the offsets-based structure."""

from __future__ import annotations

from mailmux.backend.message.envelope import envelope
from mailmux.backend.message.parsed import Part, parse_params
from mailmux.protocol.imap.response import Adjacent


def _params(params: dict[str, str]) -> list[str] | None:
    flat: list[str] = []
    for key, value in params.items():
        flat += [key.upper(), value]
    return flat or None


def _disposition(part: Part) -> list[object] | None:
    value = part.text("content-disposition")
    if not value:
        return None
    kind, params = parse_params(value)
    return [kind.upper() or "ATTACHMENT", _params(params)]


def _extension(part: Part) -> list[object]:
    language = part.text("content-language")
    return [_disposition(part), language.strip() if language else None,
            part.text("content-location")]


def bodystructure(part: Part, extensible: bool) -> list[object]:
    if part.maintype == "multipart":
        children: list[object] = [bodystructure(c, extensible) for c in part.children]
        if not children:  # a multipart without parts: describe it as an empty text part
            children = [["TEXT", "PLAIN", ["CHARSET", "US-ASCII"], None, None, "7BIT", 0, 0]]
        result: list[object] = [Adjacent(children), part.subtype.upper()]
        if extensible:
            params = {k: v for k, v in part.params.items()}
            result += [_params(params), *_extension(part)]
        return result
    result = [
        part.maintype.upper(), part.subtype.upper(), _params(part.params),
        part.text("content-id"), part.text("content-description"), part.encoding, part.size,
    ]
    if part.message is not None:
        result += [envelope(part.message), bodystructure(part.message, extensible), part.lines]
    elif part.maintype == "text":
        result.append(part.lines)
    if extensible:
        result += [part.text("content-md5"), *_extension(part)]
    return result
