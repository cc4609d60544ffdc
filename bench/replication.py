"""Replication figures on loopback, measured on real node processes in one run:

- lag p50/p99 in immediate mode under a steady stream of SMTP deliveries (default 100 msg/s):
  time from node A's 250 to the message's EXISTS on node B (an IDLE session on B);
- SMTP intake (4 concurrent clients) with W=2 (normal importance) as a ratio to W=1
  (Precedence: bulk), alternating rounds in the same pool so machine noise hits both alike;
- catch-up rate of a wiped node (messages/s until its INBOX count matches).

    python bench/replication.py [--rate 100] [--seconds 10] [--throughput 600] [--catchup 2000]
"""

from __future__ import annotations

import argparse
import imaplib
import shutil
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imapclient

from tests.support.nodes import NodeProcess, write_config
from tests.support.ports import free_port

USER, PASSWORD = "bench@example.test", "bench-password"


def _pool(root: Path) -> tuple[NodeProcess, NodeProcess]:
    ports = {"a": free_port(), "b": free_port()}
    nodes = []
    for me, other in (("a", "b"), ("b", "a")):
        nodes.append(write_config(root, me, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[me]}"\n'
            f'peers = ["{other}=127.0.0.1:{ports[other]}"]\n'
            '[replication.copies]\nhigh = "all"\nnormal = 2\nbulk = 1\n')))
    nodes[0].add_user(USER, PASSWORD)
    for n in nodes:
        n.start()
    _wait(lambda: _count(nodes[1]) >= 0)
    return nodes[0], nodes[1]


def _count(node: NodeProcess) -> int:
    try:
        with imaplib.IMAP4(*node.imap) as imap:
            imap.login(USER, PASSWORD)
            _, data = imap.status("INBOX", "(MESSAGES)")
            return int(data[0].split(b"MESSAGES ")[1].split(b")")[0])
    except (imaplib.IMAP4.error, OSError):
        return -1


def _wait(check: object, timeout: float = 120.0) -> float:
    began = time.perf_counter()
    while not check():  # type: ignore[operator]
        if time.perf_counter() - began > timeout:
            raise SystemExit("timed out")
        time.sleep(0.02)
    return time.perf_counter() - began


def _message(i: int, header: str = "") -> bytes:
    return f"{header}Subject: r{i}\r\n\r\n{'x' * 1500}\r\n".encode()


def lag(a: NodeProcess, b: NodeProcess, rate: float, seconds: float) -> list[float]:
    start_count = _count(b)
    watcher = imapclient.IMAPClient(b.imap[0], port=b.imap[1], ssl=False)
    watcher.login(USER, PASSWORD)
    watcher.select_folder("INBOX")
    watcher.idle()
    seen: dict[int, float] = {}
    total = int(rate * seconds)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for number, what in ((r[0], r[1]) for r in watcher.idle_check(timeout=1)
                                 if len(r) > 1):
                if what == b"EXISTS":
                    now = time.perf_counter()
                    for n in range(start_count + 1, number + 1):
                        seen.setdefault(n, now)

    thread = threading.Thread(target=watch)
    thread.start()
    sent: dict[int, float] = {}
    with smtplib.SMTP(*a.smtp) as smtp:
        began = time.perf_counter()
        for i in range(total):
            target = began + i / rate
            if (pause := target - time.perf_counter()) > 0:
                time.sleep(pause)  # pacing the load generator
            smtp.sendmail("load@example.org", [USER], _message(i, "Precedence: bulk\r\n"))
            sent[start_count + i + 1] = time.perf_counter()
    _wait(lambda: len(seen) >= total, 60)
    done.set()
    thread.join()
    watcher.idle_done()
    watcher.logout()
    return [max(0.0, seen[n] - t) * 1000 for n, t in sent.items()]


def throughput(a: NodeProcess, count: int, header: str, clients: int = 4) -> float:
    """Messages per second from several concurrent SMTP clients (as MTAs deliver)."""
    def send(share: int) -> None:
        with smtplib.SMTP(*a.smtp) as smtp:
            for i in range(share):
                smtp.sendmail("load@example.org", [USER], _message(i, header))

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(send, count // clients) for _ in range(clients)]:
            future.result()
    return (count // clients) * clients / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--throughput", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--catchup", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailmux-bench-") as tmp:
        a, b = _pool(Path(tmp))
        try:
            lags = sorted(lag(a, b, args.rate, args.seconds))
            w1: list[float] = []
            w2: list[float] = []
            for _ in range(args.rounds):
                w1.append(throughput(a, args.throughput // args.rounds, "Precedence: bulk\r\n"))
                w2.append(throughput(a, args.throughput // args.rounds, ""))
            with smtplib.SMTP(*a.smtp) as smtp:
                for i in range(args.catchup):
                    smtp.sendmail("load@example.org", [USER], _message(i, "Precedence: bulk\r\n"))
            total = _count(a)
            _wait(lambda: _count(b) == total)
            assert b.stop() == 0
            shutil.rmtree(b.data_dir)
            b.data_dir.mkdir(mode=0o700)  # a node requires it private
            b.start()
            elapsed = _wait(lambda: _count(b) == total, 600)
        finally:
            a.kill()
            b.kill()
    p50 = statistics.median(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"replication lag at {args.rate:.0f} msg/s for {args.seconds:.0f}s ({len(lags)} msgs): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (goal p99 <= 50 ms)")
    r1, r2 = statistics.median(w1), statistics.median(w2)
    print(f"SMTP intake W=1 {r1:.0f} msg/s, W=2 {r2:.0f} msg/s, ratio {r2 / r1:.2f} (goal >= 0.7)")
    print(f"catch-up of a wiped node: {total} messages in {elapsed:.1f} s = "
          f"{total / elapsed:.0f} msg/s")


if __name__ == "__main__":
    main()
