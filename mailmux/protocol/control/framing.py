"""Control messages over TCP: each one prefixed by its length as 4 bytes, big-endian.

Sans-IO in the h11 style: feed received bytes to `FrameDecoder.receive_data`, then call
`next_frame` until it returns None (need more bytes). A length above the limit raises
ControlDecodeError; the stream cannot be resynchronised after that, so the caller closes it.
"""

from __future__ import annotations

import struct

from mailmux.protocol.control.errors import ControlDecodeError

_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 8 * 1024


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self.max_frame:
            raise ControlDecodeError(
                f"frame of {length} bytes exceeds {self.max_frame}", reason="oversized"
            )
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF: truncated)."""
        return len(self._buffer)
