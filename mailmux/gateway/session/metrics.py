"""Failover figures of one gateway process, per node: failovers, replays, recovery times."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mailmux import metrics as prometheus

log = logging.getLogger(__name__)

# The same figures for Prometheus, served wherever the process serves /metrics (mailmux.metrics).
FAILOVERS = prometheus.counter(
    "mailmux_gateway_failovers_total", "Sessions that lost this node and moved elsewhere",
    ["node"])
REPLAYS = prometheus.counter(
    "mailmux_gateway_replays_total", "Commands with a replay id re-sent to this node", ["node"])
HANGS = prometheus.counter(
    "mailmux_gateway_hangs_total", "Times the heartbeat found this node hung", ["node"])
RECOVERY = prometheus.histogram(
    "mailmux_gateway_recovery_seconds",
    "From losing this node to the in-flight command's tagged answer", ["node"])

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
        FAILOVERS.labels(node_id).inc()

    def replay(self, node_id: str) -> None:
        self.nodes[node_id].replays += 1
        REPLAYS.labels(node_id).inc()

    def recovered(self, lost_node: str, seconds: float) -> None:
        """The command in flight when `lost_node` failed got its answer `seconds` later."""
        RECOVERY.labels(lost_node).observe(seconds)
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


# Shown by `mailmux-gateway status`, which runs in another process: the running gateway keeps a
# small JSON file next to its config, replaced atomically once a second.

STATUS_INTERVAL = 1.0


def status_path(config_path: Path) -> Path:
    return config_path.with_suffix(".failover.json")


async def publish(metrics: FailoverMetrics, hangs: dict[str, int], path: Path) -> None:
    """Write the figures to `path` every STATUS_INTERVAL until cancelled."""
    warned = False
    while True:
        figures = metrics.snapshot()
        for node, count in hangs.items():
            figures.setdefault(node, {"failovers": 0, "replays": 0, "recoveries": 0,
                                      "recovery_p50": None, "recovery_p99": None})
            figures[node]["hangs"] = count
        data = json.dumps({"at": time.time(), "pid": os.getpid(), "nodes": figures})
        try:
            partial = path.with_suffix(".tmp")
            partial.write_text(data)
            partial.replace(path)
        except OSError as exc:
            if not warned:
                log.warning("failover figures cannot be written to %s: %s", path, exc)
                warned = True
        await asyncio.sleep(STATUS_INTERVAL)  # a timer: the publishing cadence


def read_status(path: Path) -> dict[str, dict[str, object]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    return nodes if isinstance(nodes, dict) else None


def format_status(nodes: dict[str, dict[str, object]]) -> list[str]:
    def seconds(value: object) -> str:
        return f"{value:.3f}s" if isinstance(value, float) else "-"

    header = ("node", "failovers", "hangs", "replays", "recovery p50", "recovery p99")
    rows = [header, *(
        (node, str(f.get("failovers", 0)), str(f.get("hangs", 0)), str(f.get("replays", 0)),
         seconds(f.get("recovery_p50")), seconds(f.get("recovery_p99")))
        for node, f in sorted(nodes.items())
    )]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
