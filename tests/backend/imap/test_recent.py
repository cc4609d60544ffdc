"""The node-local \\Recent marker (pure: no server)."""

from __future__ import annotations

from mailmux.backend.imap.recent import RecentClaims


def test_first_claim_wins_and_peek_does_not_claim() -> None:
    claims = RecentClaims()
    assert claims.peek((1, 10), [1, 2, 3]) == [1, 2, 3]
    assert claims.claim((1, 10), [1, 2, 3]) == [1, 2, 3]
    assert claims.claim((1, 10), [1, 2, 3]) == []
    assert claims.peek((1, 10), [1, 2, 3, 4]) == [4]
    assert claims.claim((1, 10), [1, 2, 3, 4, 5]) == [4, 5]
    assert claims.peek((2, 10), [7]) == [7]  # per mailbox
    assert claims.peek((1, 11), [1]) == [1]  # a re-created mailbox that reuses the id


def test_what_the_node_held_at_start_or_took_in_from_peers_counts_as_seen() -> None:
    claims = RecentClaims()
    claims.start_from({(1, 10): 5})
    assert claims.claim((1, 10), [3, 5, 6]) == [6]
    claims.arrived({(1, 10): 8, (2, 10): 4})
    assert claims.claim((1, 10), [7, 8, 9]) == [9]
    assert claims.peek((2, 10), [4, 5]) == [5]
    claims.arrived({(1, 10): 2})  # never backwards
    assert claims.marker((1, 10)) == 9
