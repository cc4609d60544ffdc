"""A 3-node pool behind several gateways, with fixed addresses so a node can be SIGKILLed and
restarted in place, optional cuttable TCP proxies on every replication link and every
gateway→node control link, and a seeded fault injector (stress and partition tests).

Every process runs in its own process group; `cluster()` kills all of them, and closes every
proxy, whatever the test did.
"""

from __future__ import annotations

import contextlib
import imaplib
import random
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.imaptest.targets import PASSWORD, _add_users
from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import DOMAIN, SECRET, NodeProcess
from tests.support.tcp_proxy import TcpProxy

DEADLINE = 60.0
# Fixed ports (a restarted node keeps its addresses) come from below Linux's ephemeral range
# (32768-60999): an outgoing connection's local port, or another test's port-0 listener, can
# then never take a port between its choice and a node's restart.
FIXED_PORTS = (20000, 32000)
_taken: set[int] = set()


def fixed_port() -> int:
    while True:
        port = random.randrange(*FIXED_PORTS)
        if port in _taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port


def _node_config(root: Path, node_id: str, ports: dict[str, int], peers: list[str],
                 normal: int) -> NodeProcess:
    data_dir = root / node_id
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = root / f"{node_id}.toml"
    path.write_text(
        f'node_id = "{node_id}"\n'
        f'data_dir = "{data_dir}"\n'
        f'domains = ["{DOMAIN}"]\n'
        f'pool_secret = "{SECRET}"\n'
        f'listen_imap = "127.0.0.1:{ports["imap"]}"\n'
        f'listen_smtp = "127.0.0.1:{ports["smtp"]}"\n'
        f'listen_control = "127.0.0.1:{ports["control"]}"\n'
        "[replication]\n"
        f'listen = "127.0.0.1:{ports["replication"]}"\n'
        f"peers = [{', '.join(peers)}]\n"
        'copy_timeout = "2s"\n'
        "[replication.copies]\n"
        f'high = "all"\nnormal = {normal}\nbulk = 1\n')
    path.chmod(0o600)
    return NodeProcess(node_id=node_id, config_path=path, data_dir=data_dir)


class UdpProxy:
    """Forwards a gateway's control datagrams (discovery, load, heartbeats) to one node, and
    the answers back; `cut` drops them all until `heal` (a gateway that lost sight of a node).
    A TCP proxy would not do: control queries are UDP."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open = True
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self.port: int = self._front.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._front, selectors.EVENT_READ, None)
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self.open = False

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        for sock in [self._front, *self._upstream.values()]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    data, source = sock.recvfrom(65536)
                    if not self.open:
                        continue
                    if key.data is None:
                        self._forward(data, source)
                    else:
                        self._front.sendto(data, key.data)

    def _forward(self, data: bytes, client: tuple[str, int]) -> None:
        upstream = self._upstream.get(client)
        if upstream is None:
            if len(self._upstream) >= 256:
                return  # bounded: a test has a handful of gateways
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.connect(self.target)
            self._selector.register(upstream, selectors.EVENT_READ, client)
            self._upstream[client] = upstream
        upstream.send(data)


@dataclass
class Cluster:
    nodes: dict[str, NodeProcess]
    gateways: list[GatewayProcess]
    links: dict[tuple[str, str], TcpProxy]  # (from, to) replication links, when proxied
    views: list[dict[str, UdpProxy]]  # per gateway: node → its control proxy, when proxied
    stopped: set[str] = field(default_factory=set)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.kill()
        self.stopped.discard(node_id)
        node.start()

    def stop(self, node_id: str) -> None:
        self.nodes[node_id].signal(signal.SIGSTOP)
        self.stopped.add(node_id)

    def cont(self, node_id: str) -> None:
        self.nodes[node_id].signal(signal.SIGCONT)
        self.stopped.discard(node_id)

    def split(self, side: set[str]) -> None:
        """Cut every replication link between `side` and the rest."""
        for (a, b), proxy in self.links.items():
            if (a in side) != (b in side):
                proxy.cut()

    def heal(self) -> None:
        for proxy in self.links.values():
            proxy.heal()
        for view in self.views:
            for proxy in view.values():
                proxy.heal()

    def hide(self, gateway: int, node_ids: set[str]) -> None:
        """The gateway loses sight of these nodes (its control links to them are cut)."""
        for node_id in node_ids:
            self.views[gateway][node_id].cut()


@contextlib.contextmanager
def cluster(root: Path, users: list[str], *, gateways: int = 2, proxied: bool = False,
            normal: int = 2, gateway_extra: str = "") -> Iterator[Cluster]:
    ids = "abc"
    ports = {i: {k: fixed_port() for k in ("imap", "smtp", "control", "replication")}
             for i in ids}
    proxies: list[TcpProxy] = []
    links: dict[tuple[str, str], TcpProxy] = {}
    nodes: dict[str, NodeProcess] = {}
    made: list[GatewayProcess] = []
    udp: list[UdpProxy] = []
    try:
        for i in ids:
            peers = []
            for j in ids:
                if j == i:
                    continue
                port = ports[j]["replication"]
                if proxied:
                    links[(i, j)] = proxy = TcpProxy(("127.0.0.1", port))
                    proxies.append(proxy)
                    port = proxy.port
                peers.append(f'"{j}=127.0.0.1:{port}"')
            nodes[i] = _node_config(root, i, ports[i], peers, normal)
        _add_users(nodes["a"], users)
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            wait_until(lambda n=node: _can_login(n.imap, users[-1]),  # type: ignore[misc]
                       f"{users[-1]} on {node.node_id}")
        views: list[dict[str, UdpProxy]] = []
        for g in range(gateways):
            view: dict[str, UdpProxy] = {}
            controls = []
            for i in ids:
                address = ("127.0.0.1", ports[i]["control"])
                if proxied:
                    view[i] = control = UdpProxy(address)
                    udp.append(control)
                    address = ("127.0.0.1", control.port)
                controls.append(address)
            views.append(view)
            gateway = write_gateway_config(root / f"gateway{g}.toml", controls, gateway_extra)
            made.append(gateway)
            gateway.start()
        yield Cluster(nodes, made, links, views)
    finally:
        for gateway in made:
            gateway.kill()
        for node in nodes.values():
            with contextlib.suppress(ProcessLookupError, AssertionError):
                node.signal(signal.SIGCONT)  # a stopped process group still dies of SIGKILL
            node.kill()
        for proxy in proxies:
            proxy.close()
        for control in udp:
            control.close()


def _can_login(address: tuple[str, int], user: str) -> bool:
    try:
        with imaplib.IMAP4(*address, timeout=10) as imap:
            imap.login(user, PASSWORD)
            return True
    except (imaplib.IMAP4.error, OSError):
        return False


def wait_until(check: object, what: str, deadline: float = DEADLINE) -> None:
    assert callable(check)
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(0.2)  # polling with a deadline


class FaultInjector:
    """A seeded sequence of node faults, one at a time, for as long as it runs: SIGKILL and
    restart, or SIGSTOP for a while and SIGCONT. At most one node is down at any moment, so a
    majority (and W=2 copies) stays reachable. `actions` records what was done, for the
    failure message (and the seed reproduces it)."""

    def __init__(self, pool: Cluster, seed: int, pause: tuple[float, float] = (2.0, 5.0)
                 ) -> None:
        self.pool = pool
        self.random = random.Random(seed)
        self.pause = pause
        self.actions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)

    def __enter__(self) -> FaultInjector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _wait(self, low: float, high: float) -> bool:
        return self._stop.wait(self.random.uniform(low, high))

    def _run(self) -> None:
        while not self._wait(*self.pause):
            node_id = self.random.choice(sorted(self.pool.nodes))
            try:
                if self.random.random() < 0.5:
                    self.actions.append(f"{time.monotonic():.1f} SIGKILL+restart {node_id}")
                    self.pool.nodes[node_id].signal(signal.SIGKILL)
                    self._stop.wait(self.random.uniform(0.2, 1.5))
                    self.pool.restart(node_id)
                else:
                    self.actions.append(f"{time.monotonic():.1f} SIGSTOP {node_id}")
                    self.pool.stop(node_id)
                    self._stop.wait(self.random.uniform(0.5, 3.0))
                    self.pool.cont(node_id)
                    self.actions.append(f"{time.monotonic():.1f} SIGCONT {node_id}")
            except (OSError, RuntimeError, AssertionError) as exc:
                self.errors.append(f"{node_id}: {exc}")
                with contextlib.suppress(OSError, RuntimeError, AssertionError):
                    self.pool.restart(node_id)
