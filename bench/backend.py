"""Backend node throughput on loopback: SMTP intake msg/s, APPEND msg/s, FETCH MB/s.

Starts a real `mailmux-backend` process in a temporary directory and drives it with real
clients from several threads at once (so group commit has something to group). Prints figures;
asserts nothing about speed.

    python bench/backend.py [--messages 2000] [--clients 8] [--fetch-size 102400]
"""

from __future__ import annotations

import argparse
import imaplib
import smtplib
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.nodes import NodeProcess, write_config

USER, PASSWORD = "bench@example.test", "bench-password"


def _message(i: int, size: int) -> bytes:
    head = f"From: load@example.org\r\nTo: {USER}\r\nSubject: bench {i}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def _smtp_worker(node: NodeProcess, start: int, count: int, size: int) -> None:
    with smtplib.SMTP(*node.smtp) as smtp:
        for i in range(start, start + count):
            smtp.sendmail("load@example.org", [USER], _message(i, size))


def _append_worker(node: NodeProcess, start: int, count: int, size: int) -> None:
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login(USER, PASSWORD)
        for i in range(start, start + count):
            typ, _ = imap.append("Archive", None, None, _message(i, size))
            assert typ == "OK"


def _parallel(
    worker: Callable[[NodeProcess, int, int, int], None],
    node: NodeProcess,
    total: int,
    clients: int,
    size: int,
) -> float:
    per = total // clients
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker, node, c * per, per, size) for c in range(clients)]:
            f.result()
    return per * clients / (time.perf_counter() - began)


def _fetch_rate(node: NodeProcess, mailbox: str) -> tuple[float, int]:
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login(USER, PASSWORD)
        imap.select(mailbox, readonly=True)
        began = time.perf_counter()
        typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
        elapsed = time.perf_counter() - began
        assert typ == "OK"
        octets = sum(len(item[1]) for item in data if isinstance(item, tuple))
    return octets / elapsed / 1e6, octets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048, help="octets per message")
    parser.add_argument("--fetch-size", type=int, default=100 * 1024)
    parser.add_argument("--fetch-count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = write_config(Path(tmp), "bench")
        node.add_user(USER, PASSWORD)
        node.start()
        try:
            smtp_rate = _parallel(_smtp_worker, node, args.messages, args.clients, args.size)
            append_rate = _parallel(_append_worker, node, args.messages, args.clients, args.size)
            # A separate mailbox of large messages for FETCH throughput.
            with imaplib.IMAP4(*node.imap) as imap:
                imap.login(USER, PASSWORD)
                for i in range(args.fetch_count):
                    imap.append("Drafts", None, None, _message(i, args.fetch_size))
            fetch_mbs, octets = _fetch_rate(node, "Drafts")
        finally:
            node.stop()
    print(f"clients={args.clients} messages={args.messages} size={args.size}B")
    print(f"SMTP intake : {smtp_rate:8.1f} msg/s")
    print(f"IMAP APPEND : {append_rate:8.1f} msg/s")
    print(f"IMAP FETCH  : {fetch_mbs:8.1f} MB/s ({octets / 1e6:.1f} MB in one FETCH 1:* BODY[])")


if __name__ == "__main__":
    main()
