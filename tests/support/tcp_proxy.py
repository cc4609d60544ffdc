"""A TCP forwarder a test can cut and heal, to partition two nodes' replication link."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.open = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `heal`."""
        with self._lock:
            self.open = False
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def pause(self) -> None:
        """Keep the connections but hold every byte (a link that went quiet, not one that
        broke) until `resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def heal(self) -> None:
        with self._lock:
            self.open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()

    def next_target(self) -> tuple[str, int]:
        """Where the next accepted connection goes."""
        return self.target

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if not self.open:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.next_target(), timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        # The other direction's pump sees the shutdown and ends too; whichever ends second
        # closes the pair (a proxy that carries thousands of short connections keeps no fds).
        with self._lock:
            if source in self._sockets:
                self._sockets = [s for s in self._sockets if s is not source and s is not sink]
                return
        source.close()
        sink.close()


class RoundRobinProxy(TcpProxy):
    """Each new connection goes to the next of several targets in turn: one client program
    whose connections are spread over several servers (imaptest over two gateways, so its
    checkpoints compare sessions of both)."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self._targets = itertools.cycle(targets)
        super().__init__(targets[0])

    def next_target(self) -> tuple[str, int]:
        return next(self._targets)
