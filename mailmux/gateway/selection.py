"""Ordering the candidates that answered "yes, I serve USER" (patent S12-S13).

Pure functions: the gateway tries the candidates in the order returned here, so the first one is
"the chosen node" and the rest are the failover order.

- `least-load`: lowest reported load first; ties go to the faster responder.
- `first-responder`: in the order the answers arrived.
- `p2c` (power of two choices): two candidates drawn at random, the less loaded first, then the
  rest by load. Many gateways reading the same (slightly stale) loads would all pick the same
  least-loaded node and herd onto it; the random pair spreads them while still avoiding hot nodes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

Address = tuple[str, int]
POLICIES = ("least-load", "first-responder", "p2c")


@dataclass(frozen=True)
class Candidate:
    node_id: str
    control: Address
    imap: Address
    smtp: Address
    load: float
    latency: float  # seconds the discovery answer took
    home: bool = False  # holds the user's home lease: every session of the user goes there


def order(
    candidates: Sequence[Candidate], policy: str, rng: random.Random | None = None
) -> list[Candidate]:
    homes = [c for c in candidates if c.home]
    if homes:
        # Only the home commits the user's changes (docs/consistency.md); the others are the
        # failover order, by the policy.
        return [homes[0], *order([c for c in candidates if c is not homes[0]], policy, rng)]
    by_load = sorted(candidates, key=lambda c: (c.load, c.latency))
    if policy == "least-load":
        return by_load
    if policy == "first-responder":
        return sorted(candidates, key=lambda c: c.latency)
    if policy == "p2c":
        if len(candidates) < 2:
            return list(candidates)
        pair = (rng or random).sample(list(candidates), 2)
        first = min(pair, key=lambda c: (c.load, c.latency))
        return [first, *(c for c in by_load if c is not first)]
    raise ValueError(f"unknown selection policy {policy!r}")
