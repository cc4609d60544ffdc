"""Outbound queue figures on loopback, with real node processes, a real remote side (an aiosmtpd
sink found through MX records on a loopback DNS server) and Postfix as the baseline, in one run:

- throughput: messages handed to the pool (gateway-authenticated intake, W=2 on a 2-node pool),
  each to one of 10 destination domains, until the sink has them all (msg/s end to end);
- takeover: the remote side stalls after RCPT, the owning node is SIGKILLed; time from the kill
  to the sink receiving the message from another node (p50/p99 over several rounds, lease 2 s),
  and how many were received twice;
- latency intake → remote, one message at a time: mailmux (hand-off to a node, its queue, MX
  delivery) vs Postfix relaying the same messages to the same sink (p50/p99 and the ratio).

    python bench/outbound.py [--messages 300] [--takeovers 8] [--latency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmux.outbound.handoff import hand_off
from tests.support.dns_server import DnsServer
from tests.support.nodes import SECRET, NodeProcess, write_config
from tests.support.ports import free_port
from tests.support.postfix import Postfix, available
from tests.support.smtp_sink import SmtpSink

SENDER = "bench@example.test"
DOMAINS = [f"d{i}.test" for i in range(10)]


def _wait(check: Callable[[], bool], what: str, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)  # polling with a deadline


def _pool(root: Path, sink: SmtpSink, dns: DnsServer, ids: str, lease: str) -> list[NodeProcess]:
    ports = {i: free_port() for i in ids}
    nodes = []
    for i in ids:
        peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in ids if j != i)
        outbound = (f'[outbound]\nmx_port = {sink.port}\n'
                    f'dns_servers = ["127.0.0.1:{dns.address[1]}"]\n'
                    f'lease = "{lease}"\npoll_interval = "0.2s"\ntimeout = "60s"\n'
                    'max_concurrent = 50\n')
        replication = (f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n'
                       '[replication.copies]\nnormal = 2\n') if len(ids) > 1 else ""
        nodes.append(write_config(root / ids, i, extra=outbound, replication=replication))
    nodes[0].add_user(SENDER, "bench-pw")
    for n in nodes:
        n.start()
    return nodes


def _message(n: int, to: str) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}-{time.time_ns()}@example.test>\r\n\r\n"
            + ("x" * 76 + "\r\n") * 26).encode()


async def _hand(node: NodeProcess, n: int, to: str) -> None:
    await hand_off(node.smtp, SECRET.encode(), SENDER, [to], _message(n, to), 60.0)


def throughput(root: Path, sink: SmtpSink, dns: DnsServer, count: int) -> None:
    nodes = _pool(root, sink, dns, "ab", "10s")
    try:
        before = len(sink.messages)

        async def run() -> float:
            sem = asyncio.Semaphore(8)

            async def one(n: int) -> None:
                async with sem:
                    await _hand(nodes[n % 2], n, f"user{n}@{DOMAINS[n % 10]}")

            started = time.monotonic()
            await asyncio.gather(*(one(n) for n in range(count)))
            return time.monotonic() - started

        started = time.monotonic()
        intake = asyncio.run(run())
        _wait(lambda: len(sink.messages) >= before + count, "all messages at the sink")
        total = time.monotonic() - started
        print(f"throughput: {count} messages to {len(DOMAINS)} domains, W=2 on 2 nodes: "
              f"intake {count / intake:.0f} msg/s, end to end {count / total:.0f} msg/s")
    finally:
        for n in nodes:
            n.kill()


def takeover(root: Path, sink: SmtpSink, dns: DnsServer, rounds: int) -> None:
    nodes = _pool(root, sink, dns, "abc", "2s")
    times, duplicates = [], 0
    try:
        for r in range(rounds):
            before = len(sink.messages)
            sink.handler.stalled = 0
            sink.handler.stall_rcpt = True
            entry = nodes[r % 3]
            asyncio.run(_hand(entry, r, f"takeover{r}@{DOMAINS[0]}"))
            _wait(lambda: sink.handler.stalled > 0, "the stalled RCPT")
            killed = time.monotonic()
            entry.kill()  # the node that queued the message owns it
            sink.handler.stall_rcpt = False
            _wait(lambda before=before: len(sink.messages) > before, "delivery by another node")
            times.append(time.monotonic() - killed)
            entry.start()
            time.sleep(0.5)  # let a late duplicate, if any, arrive before counting
            duplicates += len(sink.messages) - before - 1
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"takeover after SIGKILL of the owner (lease 2s, {rounds} rounds): "
              f"p50 {statistics.median(times):.2f}s p99 {p99:.2f}s, "
              f"duplicates {duplicates}/{rounds}")
    finally:
        for n in nodes:
            n.kill()


def _percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


def latency(root: Path, sink: SmtpSink, dns: DnsServer, count: int) -> None:
    nodes = _pool(root, sink, dns, "a", "10s")
    ours: list[float] = []
    try:
        for n in range(count):
            before = len(sink.messages)
            started = time.monotonic()
            asyncio.run(_hand(nodes[0], n, f"lat{n}@{DOMAINS[n % 10]}"))
            _wait(lambda before=before: len(sink.messages) > before, "mailmux delivery")
            ours.append(time.monotonic() - started)
    finally:
        nodes[0].kill()
    if not available():
        print("latency: Postfix baseline skipped (needs the Debian package postfix, as root)")
        print(f"latency intake→remote, mailmux: p50 {_percentiles(ours)[0] * 1000:.1f} ms")
        return
    theirs: list[float] = []
    with Postfix(relay=("127.0.0.1", sink.port)) as postfix:
        for n in range(count):
            before = len(sink.messages)
            started = time.monotonic()
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as smtp:
                smtp.sendmail(SENDER, [f"lat{n}@{DOMAINS[n % 10]}"], _message(n, "x"))
            _wait(lambda before=before: len(sink.messages) > before, "postfix delivery")
            theirs.append(time.monotonic() - started)
    (o50, o99), (t50, t99) = _percentiles(ours), _percentiles(theirs)
    print(f"latency intake→remote, {count} messages one at a time: mailmux p50 {o50 * 1000:.1f} "
          f"ms p99 {o99 * 1000:.1f} ms (W=1, one node); Postfix relay p50 {t50 * 1000:.1f} ms "
          f"p99 {t99 * 1000:.1f} ms; ratio mailmux/Postfix p50 {o50 / t50:.2f} p99 {o99 / t99:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--takeovers", type=int, default=8)
    parser.add_argument("--latency", type=int, default=50)
    args = parser.parse_args()
    records = {(d, "MX"): ["10 mx.sink.test."] for d in DOMAINS}
    records[("mx.sink.test", "A")] = ["127.0.0.1"]
    root = Path(tempfile.mkdtemp(prefix="mailmux-bench-outbound-"))
    try:
        with DnsServer(records) as dns, SmtpSink() as sink:
            throughput(root, sink, dns, args.messages)
            takeover(root, sink, dns, args.takeovers)
            latency(root, sink, dns, args.latency)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
