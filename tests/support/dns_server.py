"""A tiny authoritative DNS server on 127.0.0.1 (UDP, dnspython) for SRV discovery tests."""

from __future__ import annotations

import contextlib
import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    """Answers from a zone given as {(name, type): [rdata text, ...]}; an empty answer for a
    known name asked about a type it lacks; NXDOMAIN for unknown names."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = {
            (n.rstrip(".").lower() + ".", t.upper()): v for (n, t), v in records.items()
        }
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown wakes the thread blocked in recvfrom (close alone does not, on Linux).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # socket closed: the test is over
            if not data:
                return  # shut down by __exit__
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            self.queries.append(f"{name} {kind}")
            values = self.records.get((name, kind))
            if values:
                response.answer.append(dns.rrset.from_text(name, 30, "IN", kind, *values))
            elif not any(n == name for n, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            # else: the name exists with other types only: NOERROR, no answer (RFC 2308 NODATA)
            try:
                self.sock.sendto(response.to_wire(), peer)
            except OSError:
                return
