"""Convergence rules for one message's state across replicas (pure, order-independent).

Each flag is an independent last-writer-wins register keyed by (HLC time, origin node, value):
the change with the greater key decides whether the flag is set. An expunge is a tombstone that wins
over every flag change, earlier or later, because a message a user deleted must not come back.
Because the merge is a join (commutative, associative, idempotent), any interleaving of the same
changes gives the same state on every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Stamp = tuple[int, str]  # (hybrid logical clock, origin node id)


@dataclass(frozen=True)
class FlagChange:
    flag: str
    present: bool
    stamp: Stamp


@dataclass(frozen=True)
class Expunge:
    stamp: Stamp


Change = FlagChange | Expunge


@dataclass(frozen=True)
class MessageState:
    flags: Mapping[str, tuple[Stamp, bool]] = field(default_factory=dict)
    expunged: bool = False

    def visible_flags(self) -> frozenset[str]:
        return frozenset(f for f, (_, present) in self.flags.items() if present)


def apply(state: MessageState, change: Change) -> MessageState:
    if isinstance(change, Expunge):
        return MessageState(state.flags, True)
    current = state.flags.get(change.flag)
    # The value breaks ties between equal stamps so that the order of arrival never matters
    # (equal stamps only arise from a misbehaving clock, but convergence must not depend on it).
    if current is not None and current >= (change.stamp, change.present):
        return state
    flags = dict(state.flags)
    flags[change.flag] = (change.stamp, change.present)
    return MessageState(flags, state.expunged)


def merge(changes: Iterable[Change], state: MessageState | None = None) -> MessageState:
    result = state or MessageState()
    for change in changes:
        result = apply(result, change)
    return result


def join(a: MessageState, b: MessageState) -> MessageState:
    """The state that has seen both replicas' changes."""
    result = a
    for flag, (stamp, present) in b.flags.items():
        result = apply(result, FlagChange(flag, present, stamp))
    return MessageState(result.flags, a.expunged or b.expunged)
