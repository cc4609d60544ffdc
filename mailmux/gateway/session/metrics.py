"""Failover figures of one gateway process, per node: failovers, replays, recovery times."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

RECENT = 256  # recovery times kept per node for the percentiles


@dataclass
class NodeFigures:
    failovers: int = 0  # sessions that lost this node and moved elsewhere
    replays: int = 0  # replay-id commands re-sent to this node after a failover
    recoveries: list[float] = field(default_factory=list)  # seconds, most recent last

    def percentile(self, p: float) -> float | None:
        if not self.recoveries:
            return None
        ordered = sorted(self.recoveries)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class FailoverMetrics:
    def __init__(self) -> None:
        self.nodes: defaultdict[str, NodeFigures] = defaultdict(NodeFigures)

    def failover(self, node_id: str) -> None:
        self.nodes[node_id].failovers += 1

    def replay(self, node_id: str) -> None:
        self.nodes[node_id].replays += 1

    def recovered(self, lost_node: str, seconds: float) -> None:
        """The command in flight when `lost_node` failed got its answer `seconds` later."""
        kept = self.nodes[lost_node].recoveries
        kept.append(seconds)
        del kept[:-RECENT]

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            node: {"failovers": f.failovers, "replays": f.replays,
                   "recoveries": len(f.recoveries),
                   "recovery_p50": f.percentile(0.5), "recovery_p99": f.percentile(0.99)}
            for node, f in sorted(self.nodes.items())
        }
