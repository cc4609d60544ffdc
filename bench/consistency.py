"""What "acknowledged means replicated" costs, on real node processes in one run: APPEND and
STORE throughput (4 concurrent IMAP clients) on a 2-node pool with W=2 (`normal = 2`, every
change waits for the peer's fsync'd acknowledgement) as a ratio to the same on a 2-node pool with
W=1 (`normal = 1`), rounds alternating between the pools so machine noise hits both alike.

    python bench/consistency.py [--messages 300] [--rounds 3] [--clients 4]

With few clients the ratio is the latency of one change's round trip (commit, ship, the peer's
commit, the acknowledgement); with many, how well concurrent changes share round trips and
the peer's fsyncs (pipelined batches, group commit).

(Home takeover time is not measured: the per-user lease is not implemented; see
docs/consistency.md.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imapclient

from tests.support.nodes import NodeProcess, write_config
from tests.support.ports import free_port

USER, PASSWORD = "bench@example.test", "bench-password"
CLIENTS = 4


def _pool(root: Path, normal: int) -> list[NodeProcess]:
    ports = {"a": free_port(), "b": free_port()}
    nodes = []
    for me, other in (("a", "b"), ("b", "a")):
        nodes.append(write_config(root, me, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[me]}"\n'
            f'peers = ["{other}=127.0.0.1:{ports[other]}"]\n'
            f'[replication.copies]\nhigh = "all"\nnormal = {normal}\nbulk = 1\n')))
    nodes[0].add_user(USER, PASSWORD)
    for n in nodes:
        n.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _client(nodes[1]).logout()
            break
        except (imapclient.exceptions.IMAPClientError, OSError):
            time.sleep(0.2)  # waiting for the user to replicate, with a deadline
    return nodes


def _client(node: NodeProcess) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=60)
    client.login(USER, PASSWORD)
    return client


def _appends(node: NodeProcess, count: int) -> float:
    def work(n: int) -> None:
        with _client(node) as client:
            for i in range(n):
                client.append("INBOX", f"Subject: bench {i}\r\n\r\nbody {i}\r\n".encode())

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, [count // CLIENTS] * CLIENTS))
    return (count // CLIENTS * CLIENTS) / (time.perf_counter() - start)


def _stores(node: NodeProcess, count: int) -> float:
    def work(n: int) -> None:
        with _client(node) as client:
            client.select_folder("INBOX")
            uids = client.search("ALL")
            for i in range(n):  # every STORE changes something (a no-op needs no copies)
                uid = [uids[i // 2 % len(uids)]]
                if i % 2:
                    client.remove_flags(uid, [b"$bench"], silent=True)
                else:
                    client.add_flags(uid, [b"$bench"], silent=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, [count // CLIENTS] * CLIENTS))
    return (count // CLIENTS * CLIENTS) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    global CLIENTS
    CLIENTS = args.clients
    with tempfile.TemporaryDirectory() as tmp:
        pools = {w: _pool(Path(tmp) / f"w{w}", normal=w) for w in (1, 2)}
        try:
            rates: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for w, nodes in pools.items():
                    rates.setdefault(("APPEND", w), []).append(
                        _appends(nodes[0], args.messages))
                    rates.setdefault(("STORE", w), []).append(_stores(nodes[0], args.messages))
            for op in ("APPEND", "STORE"):
                w1 = statistics.median(rates[(op, 1)])
                w2 = statistics.median(rates[(op, 2)])
                print(f"{op:6} W=1 {w1:7.1f}/s  W=2 {w2:7.1f}/s  W=2 / W=1 = {w2 / w1:.2f}"
                      "  (goal >= 0.7)")
        finally:
            for nodes in pools.values():
                for n in nodes:
                    n.kill()


if __name__ == "__main__":
    main()
