"""parse_command over the RFC 3501 grammar and the extensions the server offers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import (
    Append,
    Authenticate,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    NoArgs,
    Rename,
    Search,
    SearchKey,
    Section,
    SeqRange,
    SequenceSet,
    StatusArgs,
    Store,
)
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.mutf7 import encode_mailbox
from mailmux.protocol.imap.parser import parse_command
from mailmux.protocol.imap.response import encode_value, format_sequence_set


def args(raw: bytes) -> object:
    return parse_command(raw).args


@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
                                  "UNSELECT", "IDLE", "NAMESPACE"])
def test_commands_without_arguments(name: str) -> None:
    command = parse_command(f"x1 {name.lower()}\r\n".encode())
    assert (command.tag, command.name, command.args) == ("x1", name, NoArgs())


def test_login_forms_and_hidden_password() -> None:
    assert args(b'a LOGIN alice "p w\\"x"\r\n') == Login("alice", 'p w"x')
    assert args(b"a LOGIN {5+}\r\nalice {4}\r\nsecr\r\n") == Login("alice", "secr")
    command = parse_command(b"a LOGIN alice s3cret\r\n")
    assert "s3cret" not in repr(command) and "s3cret" not in repr(command.args)


def test_authenticate_with_and_without_initial_response() -> None:
    assert args(b"a AUTHENTICATE plain\r\n") == Authenticate("PLAIN", None)
    assert args(b"a AUTHENTICATE PLAIN AGEAYg==\r\n") == Authenticate("PLAIN", b"\0a\0b")
    assert args(b"a AUTHENTICATE PLAIN =\r\n") == Authenticate("PLAIN", b"")
    with pytest.raises(ParseError):
        parse_command(b"a AUTHENTICATE PLAIN !!!\r\n")


def test_mailbox_arguments() -> None:
    assert args(b"a SELECT inbox\r\n") == MailboxArg("INBOX")
    assert args(b"a EXAMINE Archive (CONDSTORE)\r\n") == MailboxArg("Archive", condstore=True)
    assert args(b'a CREATE "Old Mail" (USE (\\Archive))\r\n') == MailboxArg(
        "Old Mail", special_use=("\\Archive",))
    assert args(b"a DELETE &AOk-t&AOk-\r\n") == MailboxArg("été")
    assert args(b"a SUBSCRIBE {3}\r\nFoo\r\n") == MailboxArg("Foo")
    assert args(b"a RENAME a b\r\n") == Rename("a", "b")
    with pytest.raises(ParseError, match="mailbox"):
        parse_command(b"a SELECT &Jjo\r\n")


def test_list_variants() -> None:
    assert args(b'a LIST "" *\r\n') == ListArgs("", ("*",))
    assert args(b"a LSUB Work %\r\n") == ListArgs("Work", ("%",))
    assert args(b'a LIST (SUBSCRIBED) "" ("INBOX" Sent) RETURN (CHILDREN)\r\n') == ListArgs(
        "", ("INBOX", "Sent"), ("SUBSCRIBED",), ("CHILDREN",), extended=True)


def test_status_append() -> None:
    assert args(b"a STATUS INBOX (MESSAGES UNSEEN HIGHESTMODSEQ)\r\n") == StatusArgs(
        "INBOX", ("MESSAGES", "UNSEEN", "HIGHESTMODSEQ"))
    with pytest.raises(ParseError, match="STATUS"):
        parse_command(b"a STATUS INBOX (BOGUS)\r\n")
    when = datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))
    assert args(b'a APPEND Sent (\\Seen $x) "17-Jul-1996 02:44:25 -0700" {3+}\r\nabc\r\n') == (
        Append("Sent", ("\\Seen", "$x"), when, b"abc"))
    assert args(b"a APPEND Drafts ~{2}\r\n\x00\x01\r\n") == Append("Drafts", (), None,
                                                                    b"\x00\x01", binary=True)
    with pytest.raises(ParseError, match="NUL"):
        parse_command(b"a APPEND Drafts {2}\r\n\x00\x01\r\n")


def test_fetch_attributes() -> None:
    fetch = args(b"a FETCH 1:3,5,* (UID BODY.PEEK[1.2.HEADER.FIELDS.NOT (To cc)]<10.20> "
                 b"BINARY.PEEK[2] BODYSTRUCTURE BODY RFC822.SIZE) (CHANGEDSINCE 9)\r\n")
    assert fetch == Fetch(
        SequenceSet((SeqRange(1, 3), SeqRange(5, 5), SeqRange(None, None))),
        (FetchAttr("UID"),
         FetchAttr("BODY[]", Section((1, 2), "HEADER.FIELDS.NOT", ("TO", "CC")), True, (10, 20)),
         FetchAttr("BINARY", Section((2,)), True), FetchAttr("BODYSTRUCTURE"), FetchAttr("BODY"),
         FetchAttr("RFC822.SIZE")),
        9,
    )
    assert args(b"a FETCH 1 FAST\r\n") == Fetch(SequenceSet((SeqRange(1, 1),)), (
        FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE")))
    uid_fetch = parse_command(b"a UID FETCH 4:* BODY[]\r\n")
    assert uid_fetch.uid and uid_fetch.name == "FETCH"
    for bad in (b"a FETCH 0 FLAGS\r\n", b"a FETCH 1 (BODY[MIME])\r\n", b"a FETCH 1 ()\r\n",
                b"a FETCH 1 (NOSUCH)\r\n"):
        with pytest.raises(ParseError) as info:
            parse_command(bad)
        assert info.value.tag == "a"


def test_store_forms() -> None:
    assert args(b"a STORE 2 +FLAGS.SILENT (\\Deleted)\r\n") == Store(
        SequenceSet((SeqRange(2, 2),)), "add", True, ("\\Deleted",))
    assert args(b"a STORE 1:* (UNCHANGEDSINCE 5) -FLAGS \\seen $Work\r\n") == Store(
        SequenceSet((SeqRange(1, None),)), "remove", False, ("\\Seen", "$Work"), 5)
    assert args(b"a STORE 1 FLAGS ()\r\n") == Store(SequenceSet((SeqRange(1, 1),)), "replace",
                                                    False, ())


def test_search_program() -> None:
    search = args(b"a SEARCH CHARSET UTF-8 FROM {5}\r\nJos\xc3\xa9 (OR SEEN NOT DRAFT) "
                  b"SINCE 1-Feb-1994 BEFORE \"2-Mar-2020\" LARGER 10 UID 1:5 HEADER X-A b "
                  b"KEYWORD $x 2,4:* MODSEQ 7\r\n")
    assert isinstance(search, Search) and search.charset == "UTF-8"
    keys = search.key.children
    assert keys[0] == SearchKey("FROM", ("José",))
    assert keys[1] == SearchKey("AND", (), (SearchKey("OR", (), (
        SearchKey("SEEN"), SearchKey("NOT", (), (SearchKey("DRAFT"),)))),))
    assert keys[2] == SearchKey("SINCE", (date(1994, 2, 1),))
    assert keys[3] == SearchKey("BEFORE", (date(2020, 3, 2),))
    assert [k.name for k in keys[4:]] == ["LARGER", "UID", "HEADER", "KEYWORD", "SEQSET",
                                          "MODSEQ"]
    assert args(b"a SEARCH RETURN (MIN COUNT) ALL\r\n") == Search(
        SearchKey("AND", (), (SearchKey("ALL"),)), None, ("MIN", "COUNT"))
    with pytest.raises(ParseError) as info:
        parse_command(b"a SEARCH CHARSET ISO-2022-JP ALL\r\n")
    assert info.value.code is not None and info.value.code.startswith("BADCHARSET")
    with pytest.raises(ParseError, match="nested"):
        parse_command(b"a SEARCH " + b"NOT " * 100 + b"ALL\r\n")


def test_copy_move_expunge_id_enable() -> None:
    assert args(b"a COPY 1:2 Trash\r\n") == CopyMove(SequenceSet((SeqRange(1, 2),)), "Trash")
    assert parse_command(b"a UID MOVE 3 Junk\r\n").uid
    assert args(b"a EXPUNGE\r\n") == Expunge()
    assert args(b"a UID EXPUNGE 3:4\r\n") == Expunge(SequenceSet((SeqRange(3, 4),)))
    assert args(b'a ID ("name" "mutt" "version" NIL)\r\n') == Id(
        (("name", "mutt"), ("version", None)))
    assert args(b"a ID NIL\r\n") == Id(None)
    assert args(b"a ENABLE condstore\r\n") == Enable(("CONDSTORE",))


def test_raw_bytes_are_kept_and_errors_carry_the_tag() -> None:
    raw = b"Zz9 FETCH 1 (FLAGS)\r\n"
    assert parse_command(raw).raw == raw
    for bad, message in ((b"t1 FROB\r\n", "unknown command"), (b"t2 UID NOOP\r\n", "UID NOOP"),
                         (b"t3 SELECT\r\n", "space"), (b"t4 NOOP extra\r\n", "unexpected")):
        with pytest.raises(ParseError, match=message) as info:
            parse_command(bad)
        assert info.value.tag == bad.split()[0].decode()
    with pytest.raises(ParseError) as info:
        parse_command(b"\r\n")
    assert info.value.tag is None


_numbers = st.lists(st.integers(1, 5000), min_size=1, max_size=30)
_flags = st.lists(st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "$Work", "Junk"]),
                  unique=True, max_size=4)


@given(_numbers, _flags, st.sampled_from(["add", "remove", "replace"]), st.booleans(),
       st.one_of(st.none(), st.integers(0, 2**40)))
def test_store_round_trip(numbers: list[int], flags: list[str], mode: str, silent: bool,
                          unchanged: int | None) -> None:
    """Commands encoded by the serializer's helpers parse back to the same values."""
    sign = {"add": "+", "remove": "-", "replace": ""}[mode]
    modifier = f" (UNCHANGEDSINCE {unchanged})" if unchanged is not None else ""
    raw = (f"t STORE {format_sequence_set(numbers)}{modifier} {sign}FLAGS"
           f"{'.SILENT' if silent else ''} ({' '.join(flags)})\r\n").encode()
    store = parse_command(raw).args
    assert isinstance(store, Store)
    assert (store.mode, store.silent, store.flags, store.unchanged_since) == (
        mode, silent, tuple(flags), unchanged)
    assert [n for n in range(1, 5001) if store.sequence.contains(n, 5000)] == sorted(set(numbers))


@given(st.binary(max_size=300), _flags, st.text(min_size=1, max_size=20).filter(
    lambda s: s.upper() != "INBOX"))
def test_append_round_trip(message: bytes, flags: list[str], mailbox: str) -> None:
    data = message.replace(b"\x00", b"")
    raw = (b"t APPEND " + encode_value(encode_mailbox(mailbox)) + b" ("
           + " ".join(flags).encode() + b") {%d+}\r\n" % len(data) + data + b"\r\n")
    append = parse_command(raw).args
    assert append == Append(mailbox, tuple(flags), None, data)


# --- atoms beginning with "~", error texts (imaptest "atoms") ------------------------------


def test_tilde_starts_an_atom_unless_a_literal8_follows() -> None:
    assert args(b'a LIST "" ~foo\r\n') == ListArgs("", ("~foo",))
    assert args(b"a SELECT ~foo\r\n") == MailboxArg("~foo")
    assert args(b"a SELECT ~{3}\r\nbox\r\n") == MailboxArg("box")


@pytest.mark.parametrize("raw", [
    b"a LIST \"\" {x\r\n", b"a SELECT\r\n", b"a FETCH 1 (FLAGS\r\n",
    b"a STORE 1 +FLAGS (\\\xff)\r\n", b"a FETCH 1:* BODY[X]\r\n",
])
def test_error_texts_hold_no_bytes_repr_or_braces(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert "b'" not in info.value.message and 'b"' not in info.value.message
    assert not set("{}[]\r\n") & set(info.value.message)


def test_invalid_modified_utf7_name_is_no_not_bad() -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b"a SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}\r\n")
    assert (info.value.tag, info.value.status) == ("a", "NO")
    # as a LIST pattern it is well-formed and simply matches nothing
    listed = args(b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*\r\n")
    assert isinstance(listed, ListArgs) and listed.patterns[0].startswith("!#$&'")


def test_multiappend_parses_every_message() -> None:
    parsed = args(b'a APPEND box (\\Seen) {2}\r\nm1 "01-Jan-2026 00:00:00 +0000" {2}\r\nm2'
                  b" ~{2}\r\nm3\r\n")
    assert isinstance(parsed, Append)
    assert (parsed.flags, parsed.message) == (("\\Seen",), b"m1")
    assert [(m[0], m[2], m[3]) for m in parsed.more] == [((), b"m2", False), ((), b"m3", True)]
    assert parsed.more[0][1] == datetime(2026, 1, 1, tzinfo=UTC)


def test_utf8_mailbox_names_are_taken_as_they_are() -> None:
    # RFC 6855 (UTF8=ACCEPT); mbsync 1.4 sends raw UTF-8 names
    assert args('a CREATE "Äpfel/Öl"\r\n'.encode()) == MailboxArg("Äpfel/Öl")
    assert args(b"a CREATE \"&AMQ-pfel\"\r\n") == MailboxArg("\u00c4pfel")
