"""The gateway-only XREPLAY prefix, split off before parsing (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.replay import split_replay

IDS = st.text(alphabet="abcXYZ019-._", min_size=1, max_size=64)


@given(IDS)
def test_prefix_is_removed_and_the_id_returned(replay_id: str) -> None:
    raw = f"a1 XREPLAY {replay_id} APPEND INBOX {{3+}}\r\nabc\r\n".encode()
    assert split_replay(raw) == (b"a1 APPEND INBOX {3+}\r\nabc\r\n", replay_id)


def test_commands_without_prefix_are_untouched() -> None:
    for raw in (b"a1 NOOP\r\n", b"a1 XREPLAYX 1 NOOP\r\n", b"XREPLAY\r\n", b"a1\r\n"):
        assert split_replay(raw) == (raw, None)


@pytest.mark.parametrize("raw", [b"t XREPLAY a/b NOOP\r\n", b"t XREPLAY " + b"x" * 65 + b" NOOP",
                                 b"t XREPLAY id\r\n", b"t XREPLAY  NOOP\r\n"])
def test_malformed_prefixes_are_parse_errors_with_the_tag(raw: bytes) -> None:
    with pytest.raises(ParseError) as error:
        split_replay(raw)
    assert error.value.tag == "t"
