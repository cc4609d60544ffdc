"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 section 3).

`thread(algorithm, messages)` takes (uid, sent timestamp, subject, message-id, references)
for each searched message, in arrival order, and returns the thread forest as nested
`Node`s; `format_threads` writes the IMAP form with a function that names each message
(sequence number or UID). Pure CPU work: the session runs it in a worker thread.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailmux.backend.message.sort import base_subject

_MSGID = re.compile(r"<([^<>\s]+)>")
_REPLY = re.compile(r"^\s*(\[[^\[\]]*\]\s*)*(re|fwd?)\s*(\[[^\[\]]*\]\s*)?:", re.IGNORECASE)


@dataclass(frozen=True)
class ThreadInput:
    uid: int
    sent: float
    subject: str
    message_id: str | None
    references: tuple[str, ...]  # References, else the first id of In-Reply-To


@dataclass(eq=False)
class Node:
    message: ThreadInput | None = None  # None: a dummy (a referenced message we do not hold)
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    def order_key(self) -> tuple[float, int]:
        first = self.message or (self.children[0].message if self.children else None)
        return (first.sent, first.uid) if first else (0.0, 0)


def message_ids(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


def thread(algorithm: str, messages: Sequence[ThreadInput]) -> list[Node]:
    if algorithm == "ORDEREDSUBJECT":
        return _ordered_subject(messages)
    return _references(messages)


def _ordered_subject(messages: Sequence[ThreadInput]) -> list[Node]:
    groups: dict[str, list[ThreadInput]] = {}
    for m in sorted(messages, key=lambda m: (base_subject(m.subject), m.sent, m.uid)):
        groups.setdefault(base_subject(m.subject), []).append(m)
    roots = []
    for members in groups.values():
        root = Node(members[0])
        root.children = [Node(m, parent=root) for m in members[1:]]
        roots.append(root)
    return sorted(roots, key=Node.order_key)


def _is_ancestor(node: Node, of: Node) -> bool:
    current: Node | None = of
    while current is not None:
        if current is node:
            return True
        current = current.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _references(messages: Sequence[ThreadInput]) -> list[Node]:
    table: dict[str, Node] = {}
    unnamed: list[Node] = []
    for m in messages:
        # a missing or repeated Message-ID: the message stands on its own (RFC 5256 3 (1))
        if m.message_id and (m.message_id not in table or table[m.message_id].message is None):
            node = table.setdefault(m.message_id, Node())
            node.message = m
        else:
            node = Node(m)
            unnamed.append(node)
        refs = [table.setdefault(r, Node()) for r in m.references]
        for parent, child in itertools.pairwise(refs):
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        # RFC 5256 3 (1)(B): the last reference is the parent; an older link is broken
        # first, even when the new one would make a loop and is not made
        if node.parent is not None:
            _link_root(node)
        if refs and not _is_ancestor(node, refs[-1]):
            _link(refs[-1], node)
    roots = [n for n in [*table.values(), *unnamed] if n.parent is None]
    roots = _prune(roots, is_root=True)
    _sort(roots)
    roots = _merge_subjects(roots)
    _sort(roots)
    return roots


def _link_root(node: Node) -> None:
    assert node.parent is not None
    node.parent.children.remove(node)
    node.parent = None


def _prune(nodes: list[Node], is_root: bool) -> list[Node]:
    """Dummies go: childless ones vanish, others give their children to their parent (a
    dummy root keeps several children, which become one thread)."""
    out: list[Node] = []
    for node in nodes:
        node.children = _prune(node.children, is_root=False)
        for child in node.children:
            child.parent = node
        if node.message is not None:
            out.append(node)
        elif not node.children:
            continue
        elif is_root and len(node.children) > 1:
            out.append(node)
        else:
            for child in node.children:
                child.parent = None
            out += node.children
    return out


def _sort(nodes: list[Node]) -> None:
    for node in nodes:
        _sort(node.children)
    nodes.sort(key=Node.order_key)


def _subject_of(node: Node) -> tuple[str, bool]:
    message = node.message or (node.children[0].message if node.children else None)
    raw = message.subject if message else ""
    return base_subject(raw), bool(_REPLY.match(raw))


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """RFC 5256 3 (5): threads whose roots share a base subject become one."""
    table: dict[str, Node] = {}
    for root in roots:
        subject, reply = _subject_of(root)
        if not subject:
            continue
        old = table.get(subject)
        if old is None or (root.message is None and old.message is not None) or (
                old.message is not None and _subject_of(old)[1] and not reply):
            table[subject] = root
    out: list[Node] = []
    for root in roots:
        if root.parent is not None:
            continue  # already merged under another thread's root
        subject, reply = _subject_of(root)
        entry = table.get(subject) if subject else None
        if entry is None or entry is root:
            out.append(root)
            continue
        if entry.message is None and root.message is None:
            for child in list(root.children):
                _link(entry, child)
        elif entry.message is None or (reply and not _subject_of(entry)[1]):
            _link(entry, root)
        else:
            merged = Node()
            position = out.index(entry) if entry in out else None
            _link(merged, entry)
            _link(merged, root)
            table[subject] = merged
            if position is not None:
                out[position] = merged
            else:
                out.append(merged)
    return [n for n in out if n.parent is None]


def _render(node: Node, name: Callable[[int], int]) -> str:
    parts: list[str] = []
    current = node
    while True:
        if current.message is not None:
            parts.append(str(name(current.message.uid)))
        if len(current.children) == 1:
            current = current.children[0]
            continue
        if current.children:
            parts.append("".join(f"({_render(c, name)})" for c in current.children))
        return " ".join(parts)


def format_threads(roots: list[Node], name: Callable[[int], int]) -> str:
    return "".join(f"({_render(root, name)})" for root in roots)
