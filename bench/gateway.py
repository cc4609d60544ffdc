"""Cost of the gateway: IMAP command latency and FETCH throughput through it ÷ direct.

Starts one real backend node and one real gateway in front of it, fills a mailbox, then measures
both paths side by side in the same run (alternating rounds, so machine noise hits both alike).
Prints the figures and the ratios; asserts nothing about speed. Also prints the CPU time the
gateway process spent per small command (from /proc, Linux): on a shared, loaded machine that
figure moves less than latency does.

    python bench/gateway.py [--rounds 5] [--commands 300] [--messages 200] [--size 102400]
"""

from __future__ import annotations

import argparse
import imaplib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.gateway import write_gateway_config
from tests.support.nodes import write_config

USER, PASSWORD = "bench@example.test", "bench-password"


def _message(i: int, size: int) -> bytes:
    head = f"From: load@example.org\r\nTo: {USER}\r\nSubject: bench {i}\r\n\r\n".encode()
    line = b"y" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def _session(address: tuple[str, int]) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(*address)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    return imap


def _latency_ms(imap: imaplib.IMAP4, commands: int) -> float:
    """Median round trip of a small real command (UID FETCH of one message's flags)."""
    samples = []
    for _ in range(commands):
        began = time.perf_counter()
        typ, _ = imap.uid("FETCH", "1", "(FLAGS)")
        samples.append(time.perf_counter() - began)
        assert typ == "OK"
    return statistics.median(samples) * 1000


def _fetch_mb_s(imap: imaplib.IMAP4) -> float:
    began = time.perf_counter()
    typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
    elapsed = time.perf_counter() - began
    assert typ == "OK"
    octets = sum(len(part[1]) for part in data if isinstance(part, tuple))
    return octets / elapsed / 1e6


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=100 * 1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailmux-bench-") as tmp:
        node = write_config(Path(tmp), "a")
        node.add_user(USER, PASSWORD)
        node.start()
        gateway = write_gateway_config(Path(tmp) / "gateway.toml", [node.control])
        try:
            gateway.start()
            filler = _session(node.imap)
            for i in range(args.messages):
                filler.append("INBOX", None, None, _message(i, args.size))
            filler.logout()
            direct, proxied = _session(node.imap), _session(gateway.imap)
            lat = {"direct": [], "gateway": []}  # type: dict[str, list[float]]
            thr = {"direct": [], "gateway": []}  # type: dict[str, list[float]]
            assert gateway.proc is not None
            cpu = 0.0
            for _ in range(args.rounds):
                for name, imap in (("direct", direct), ("gateway", proxied)):
                    before = _cpu_seconds(gateway.proc.pid)
                    lat[name].append(_latency_ms(imap, args.commands))
                    if name == "gateway":
                        cpu += _cpu_seconds(gateway.proc.pid) - before
                    thr[name].append(_fetch_mb_s(imap))
            direct.logout()
            proxied.logout()
        finally:
            gateway.kill()
            node.kill()
    d_lat, g_lat = statistics.median(lat["direct"]), statistics.median(lat["gateway"])
    d_thr, g_thr = statistics.median(thr["direct"]), statistics.median(thr["gateway"])
    print(f"UID FETCH (FLAGS) latency: direct {d_lat:.3f} ms, gateway {g_lat:.3f} ms, "
          f"ratio {g_lat / d_lat:.2f} (goal <= 1.15)")
    print(f"FETCH 1:* BODY[] ({args.messages} x {args.size // 1024} KiB): direct {d_thr:.1f} MB/s, "
          f"gateway {g_thr:.1f} MB/s, ratio {g_thr / d_thr:.2f} (goal >= 0.9)")
    print(f"gateway CPU per UID FETCH (FLAGS): "
          f"{cpu / (args.rounds * args.commands) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
