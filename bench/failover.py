"""Recovery time of an in-flight command when its serving node is SIGKILLed or SIGSTOPped.

Starts three real replicated nodes and one real gateway, logs one client in, selects a mailbox,
then per trial: signals the node serving the session, sends `SEARCH ALL` at once, and times
signal → the command's tagged OK (the client never sees the failover). A killed node is started
again and a stopped one continued after each trial, so every trial has the same pool. Prints
p50/p99/max per signal and the settings; asserts nothing about speed.

    python bench/failover.py [--trials 50] [--messages 20] [--request-timeout 5]
                             [--hang-timeout 1]
"""

from __future__ import annotations

import argparse
import imaplib
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import NodeProcess, write_config
from tests.support.ports import free_port

USER, PASSWORD = "bench@example.test", "bench-password"


def _pool(root: Path) -> dict[str, NodeProcess]:
    ids = "abc"
    ports = {i: free_port() for i in ids}
    nodes = {}
    for i in ids:
        peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in ids if j != i)
        nodes[i] = write_config(root, i, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n'))
        # Fixed ports: a restarted node must be where the gateway's config says it is.
        text = nodes[i].config_path.read_text()
        for key in ("listen_imap", "listen_smtp", "listen_control"):
            text = text.replace(f'{key} = "127.0.0.1:0"', f'{key} = "127.0.0.1:{free_port()}"')
        nodes[i].config_path.write_text(text)
    nodes["a"].add_user(USER, PASSWORD)
    for node in nodes.values():
        node.start()
    return nodes


def _serving(gateway: GatewayProcess) -> str:
    found = re.findall(rf"(?:login of {re.escape(USER)} on|now on) (\w+)", gateway.log())
    return found[-1]


def _standbys(gateway: GatewayProcess) -> int:
    return gateway.log().count(f"standby for {USER} ready on ")


def _settle(gateway: GatewayProcess, before: int, deadline: float = 15.0) -> None:
    """Until the session has a standby again: a failure rarely follows another within a second,
    so each trial starts from the steady state (logged in on one node, standby on another)."""
    end = time.monotonic() + deadline
    while _standbys(gateway) <= before and time.monotonic() < end:
        time.sleep(0.05)  # polling with a deadline


def _trial(client: imaplib.IMAP4, gateway: GatewayProcess, nodes: dict[str, NodeProcess],
           sig: signal.Signals, messages: int) -> float:
    standbys = _standbys(gateway)
    victim = nodes[_serving(gateway)]
    began = time.perf_counter()
    victim.signal(sig)
    typ, data = client.search(None, "ALL")
    elapsed = time.perf_counter() - began
    assert typ == "OK" and len(data[0].split()) == messages, (typ, data)
    if sig == signal.SIGSTOP:
        victim.signal(signal.SIGCONT)
    else:
        victim.proc.wait(timeout=10)  # type: ignore[union-attr]
        victim.start()
    _settle(gateway, standbys)
    return elapsed


def _wait_login(node: NodeProcess, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with imaplib.IMAP4(*node.imap, timeout=5) as imap:
                imap.login(USER, PASSWORD)
                return
        except (imaplib.IMAP4.error, OSError):
            if time.monotonic() > end:
                raise
            time.sleep(0.1)  # polling with a deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--request-timeout", type=float, default=5.0)
    parser.add_argument("--hang-timeout", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailmux-bench-failover-") as tmp:
        root = Path(tmp)
        nodes = _pool(root)
        gateway = write_gateway_config(root / "gateway.toml", [n.control for n in nodes.values()])
        text = gateway.config_path.read_text().replace(
            "request_timeout = 3.0",
            f"request_timeout = {args.request_timeout}\nhang_timeout = {args.hang_timeout}")
        gateway.config_path.write_text(text)
        try:
            for node in nodes.values():
                _wait_login(node)
            gateway.start()
            client = imaplib.IMAP4(*gateway.imap, timeout=60)
            client.login(USER, PASSWORD)
            for i in range(args.messages):
                body = f"From: b@example.test\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
                assert client.append("INBOX", "", None, body)[0] == "OK"
            client.select("INBOX")
            _settle(gateway, 0)
            print(f"settings: 3 replicated nodes, request_timeout {args.request_timeout}s, "
                  f"hang_timeout {args.hang_timeout}s, discovery_timeout 0.5s, catchup_timeout "
                  f"2s, {args.messages} messages selected, {args.trials} trials per signal, "
                  "in-flight command SEARCH ALL; each trial starts once the session has its "
                  "standby login on a second node again")
            for sig in (signal.SIGKILL, signal.SIGSTOP):
                times = sorted(_trial(client, gateway, nodes, sig, args.messages)
                               for _ in range(args.trials))
                p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
                print(f"{sig.name:8} recovery to tagged OK: p50 {statistics.median(times):.3f}s "
                      f"p99 {p99:.3f}s max {times[-1]:.3f}s (n={len(times)})")
            client.logout()
        except BaseException:
            print("gateway log (tail):\n" + "\n".join(
                line for line in gateway.log().splitlines()[-400:] if " DEBUG " not in line))
            raise
        finally:
            gateway.kill()
            for node in nodes.values():
                if node.proc is not None and node.proc.poll() is None:
                    node.signal(signal.SIGCONT)
                node.kill()


if __name__ == "__main__":
    main()
