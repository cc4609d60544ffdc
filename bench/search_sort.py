"""SEARCH, SORT and THREAD on one big mailbox (100k messages by default), on a real node.

The mailbox is filled straight into the node's store before it starts (group-committed
appends, far quicker than 100k IMAP APPENDs), with threads of replies (Message-ID, References,
"Re:" subjects), a few hundred senders and dates spread over years. Then one imaplib client
times each command, and a second client sends NOOPs while the long ones run: a NOOP answered
promptly shows that sorting and threading run off the event loop. Figures are printed as
seconds and as ratios to `UID SEARCH ALL` measured in the same run; nothing is asserted.

    python bench/search_sort.py [--messages 100000] [--budget 600]

`--budget` is the node's command_cpu_budget for the run (the default config's 5 s would stop
the long commands with NO [LIMIT], which the output also shows with `--budget 5`).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmux.backend.config import load
from mailmux.backend.store.sqlite import SqliteStore
from tests.support.nodes import NodeProcess, write_config

USER, PASSWORD = "bench@example.test", "bench-password"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray"]
BATCH = 500  # appends in flight at once: the store's writer commits them in groups

COMMANDS = [
    ("UID SEARCH ALL", "UID SEARCH ALL"),
    ("SEARCH UNSEEN", "UID SEARCH UNSEEN"),
    ("SEARCH SUBJECT", 'UID SEARCH SUBJECT "kilo"'),
    ("SEARCH FROM", 'UID SEARCH FROM "sender17@"'),
    ("SEARCH BODY", 'UID SEARCH BODY "zebra42"'),
    ("SEARCH HEADER X-Bench", 'UID SEARCH HEADER X-Bench "7"'),
    ("ESEARCH COUNT", "UID SEARCH RETURN (COUNT) SINCE 1-Jan-2021"),
    ("SORT ARRIVAL", "UID SORT (ARRIVAL) UTF-8 ALL"),
    ("SORT DATE", "UID SORT (DATE) UTF-8 ALL"),
    ("SORT SUBJECT", "UID SORT (SUBJECT) UTF-8 ALL"),
    ("SORT REVERSE FROM", "UID SORT (REVERSE FROM) UTF-8 ALL"),
    ("SORT PARTIAL 1:100", "UID SORT RETURN (PARTIAL 1:100) (REVERSE DATE) UTF-8 ALL"),
    ("THREAD REFERENCES", "UID THREAD REFERENCES UTF-8 ALL"),
    ("THREAD ORDEREDSUBJECT", "UID THREAD ORDEREDSUBJECT UTF-8 ALL"),
]


def _message(i: int, rng: random.Random, ids: list[str]) -> tuple[bytes, datetime]:
    when = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(3 * 525_600))
    own = f"<m{i}@bench.example>"
    headers = [f"From: Sender {i % 300} <sender{i % 300}@example.org>", f"To: {USER}",
               f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}", f"Message-ID: {own}",
               f"X-Bench: {i % 10}"]
    topic = " ".join(rng.sample(WORDS, 3))
    if ids and rng.random() < 0.6:  # a reply to an earlier message: a thread grows
        parent = ids[rng.randrange(max(0, len(ids) - 2000), len(ids))]
        headers += [f"In-Reply-To: {parent}", f"References: {parent}"]
        topic = "Re: " + WORDS[hash(parent) % len(WORDS)]
    headers.append(f"Subject: {topic}")
    body = " ".join(rng.choices(WORDS, k=40)) + (f" zebra{i % 1000}" if i % 97 == 0 else "")
    ids.append(own)
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode(), when


async def _fill(node: NodeProcess, count: int) -> None:
    config = load(node.config_path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    ids: list[str] = []
    async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
        await store.add_user(USER, PASSWORD)
        for start in range(0, count, BATCH):
            made = [_message(i, rng, ids) for i in range(start, min(count, start + BATCH))]
            flags = [("\\Seen",) if j % 3 else () for j in range(len(made))]
            await asyncio.gather(*(store.append(USER, "INBOX", body, f, when)
                                   for (body, when), f in zip(made, flags, strict=True)))
            if start % 10_000 == 0:
                print(f"  filled {start + len(made)}/{count}", flush=True)


class Prober(threading.Thread):
    """NOOPs from a second client while the timed commands run: its latencies show whether
    the node's event loop stayed free."""

    def __init__(self, node: NodeProcess) -> None:
        super().__init__(daemon=True)
        self.imap = imaplib.IMAP4(*node.imap, timeout=600)
        self.imap.login(USER, PASSWORD)
        self.latencies: list[tuple[float, float]] = []  # (answered at, seconds taken)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.perf_counter()
            self.imap.noop()
            done = time.perf_counter()
            self.latencies.append((done, done - began))
            self.stop.wait(0.05)  # a probe interval, not synchronisation

    def worst(self, start: float, end: float) -> float:
        """The slowest NOOP answered while [start, end] ran (ms)."""
        return 1000 * max((t for at, t in self.latencies if start <= at <= end + 0.5),
                          default=0.0)


def _timed(imap: imaplib.IMAP4, command: str) -> tuple[float, str, float]:
    tag = imap._new_tag().decode()  # type: ignore[attr-defined]
    began = time.perf_counter()
    imap.send(f"{tag} {command}\r\n".encode())
    status = ""
    while True:
        line = imap.readline()
        if line.startswith(tag.encode()):
            status = line.decode().split(" ", 2)[1]
            if status != "OK":
                status = line.decode().strip()
            break
    return time.perf_counter() - began, status, began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--budget", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = write_config(Path(tmp), "bench", extra=f"command_cpu_budget = {args.budget}")
        began = time.perf_counter()
        asyncio.run(_fill(node, args.messages))
        print(f"filled {args.messages} messages in {time.perf_counter() - began:.1f}s")
        node.start()
        try:
            imap = imaplib.IMAP4(*node.imap, timeout=600)
            imap.login(USER, PASSWORD)
            began = time.perf_counter()
            imap.select("INBOX")
            print(f"SELECT INBOX: {time.perf_counter() - began:.3f}s")
            prober = Prober(node)
            prober.start()
            results = [(name, *_timed(imap, command)) for name, command in COMMANDS]
            prober.stop.set()
            prober.join()
            baseline = results[0][1]
            print(f"\n{'command':24} {'seconds':>9} {'x SEARCH ALL':>13} {'NOOP max ms':>12}"
                  "  answer")
            for name, seconds, status, began in results:
                worst = prober.worst(began, began + seconds)
                print(f"{name:24} {seconds:9.3f} {seconds / baseline:13.1f} {worst:12.0f}  "
                      f"{status}")
            lat = sorted(t for _, t in prober.latencies)
            print(f"\nNOOP from a second client meanwhile: {len(lat)} probes, median "
                  f"{statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
            imap.logout()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
