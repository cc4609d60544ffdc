"""Prometheus metrics for a mailmux process (node or gateway).

How this works: every metric lives in one registry per process (`REGISTRY`), defined through
`counter()`, `gauge()` and `histogram()`, which return the already-registered metric when called
again with the same name, so a module can define its metrics at import time and tests that start
several nodes in one process do not trip over duplicates. Values that are cheaper to read than to
keep up to date (store size, replication backlog, the outbound queue) are registered as
callbacks with `register_source()` and read at scrape time.

`start_metrics_server("127.0.0.1:9101")` serves `/metrics` from a thread (prometheus-client's
WSGI server), so a slow scraper never blocks the event loop. Callbacks therefore run on that
thread: they must only read plain attributes or files, never touch asyncio or SQLite objects.

For the outbound queue (issue 11): call
`set_outbound_queue_source(lambda: (messages_queued, age_of_oldest_in_seconds))` once when the
queue starts; until then both gauges read 0.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mailmux.configfile import ConfigError, parse_address

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds: IMAP commands range from sub-millisecond NOOPs to multi-second FETCHes of big mail.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_M = TypeVar("_M", Counter, Gauge, Histogram)
_defined: dict[str, Counter | Gauge | Histogram] = {}
_lock = threading.Lock()


def _get_or_make(kind: type[_M], name: str, make: Callable[[], _M]) -> _M:
    with _lock:
        metric = _defined.get(name)
        if metric is None:
            metric = _defined[name] = make()
        if not isinstance(metric, kind):
            raise TypeError(f"metric {name} is already defined as {type(metric).__name__}")
        return metric


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    return _get_or_make(
        Counter, name, lambda: Counter(name, documentation, labels, registry=REGISTRY)
    )


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return _get_or_make(Gauge, name, lambda: Gauge(name, documentation, labels, registry=REGISTRY))


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (),
    buckets: Sequence[float] = LATENCY_BUCKETS,
) -> Histogram:
    return _get_or_make(
        Histogram, name,
        lambda: Histogram(name, documentation, labels, buckets=buckets, registry=REGISTRY),
    )


# Callback gauges --------------------------------------------------------------------------

Reading = Mapping[tuple[str, ...], float]


class _SourceGauge(Collector):
    """A gauge (or counter) family whose samples come from callbacks, one per source."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 kind: str = "gauge") -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.kind = kind
        self.sources: dict[str, Callable[[], Reading]] = {}

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        make = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return make(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        family = self._family()
        for key, source in list(self.sources.items()):
            try:
                reading = source()
            except Exception:  # a broken source must not break the whole scrape
                log.exception("metrics source %s of %s failed", key, self.name)
                continue
            for label_values, value in reading.items():
                family.add_metric(list(label_values), value)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        yield self._family()


_sources: dict[str, _SourceGauge] = {}


def register_source(
    name: str, documentation: str, labels: Sequence[str], key: str,
    source: Callable[[], Reading], kind: str = "gauge",
) -> Callable[[], None]:
    """Read gauge `name` from `source()` at scrape time: {label values: value}.

    `kind="counter"` exports a counter kept elsewhere (name without `_total`).

    `key` names the source (e.g. the node id), so a restarted component replaces its old
    callback. Returns a function that unregisters it (call it when the component closes).
    """
    with _lock:
        family = _sources.get(name)
        if family is None:
            family = _sources[name] = _SourceGauge(name, documentation, labels, kind)
            REGISTRY.register(family)
        family.sources[key] = source

    def unregister() -> None:
        with _lock:
            if family.sources.get(key) is source:
                del family.sources[key]

    return unregister


OUTBOUND_QUEUE_DOC = "messages waiting in the outbound queue"
OUTBOUND_AGE_DOC = "age in seconds of the oldest message in the outbound queue"


def set_outbound_queue_source(source: Callable[[], tuple[int, float]]) -> Callable[[], None]:
    """The outbound queue reports (messages queued, age of the oldest in seconds) through this."""
    first = register_source(
        "mailmux_outbound_queue_messages", OUTBOUND_QUEUE_DOC, (), "outbound",
        lambda: {(): float(source()[0])},
    )
    second = register_source(
        "mailmux_outbound_queue_oldest_age_seconds", OUTBOUND_AGE_DOC, (), "outbound",
        lambda: {(): float(source()[1])},
    )

    def unregister() -> None:
        first()
        second()
        _register_outbound_zero()

    return unregister


def _register_outbound_zero() -> None:
    register_source("mailmux_outbound_queue_messages", OUTBOUND_QUEUE_DOC, (), "outbound",
                    lambda: {(): 0.0})
    register_source("mailmux_outbound_queue_oldest_age_seconds", OUTBOUND_AGE_DOC, (),
                    "outbound", lambda: {(): 0.0})


_register_outbound_zero()


# What nodes and gateways count ----------------------------------------------------------

# Command names come from clients: only these become label values, anything else is "OTHER",
# so a client cannot grow the registry without bound.
IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ID", "ENABLE",
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
    "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE",
    "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "UID FETCH", "UID SEARCH", "UID STORE",
    "UID COPY", "UID MOVE", "UID EXPUNGE", "GETQUOTA", "GETQUOTAROOT", "SORT", "THREAD",
    "XREPLAY",
})

SESSIONS = gauge("mailmux_sessions", "client sessions open now", ["protocol"])
SESSIONS_OPENED = counter("mailmux_sessions_opened", "client sessions opened", ["protocol"])
class _CommandTimes(Collector):
    """`mailmux_imap_command_seconds`, a histogram by command name, kept in plain lists.

    A prometheus_client Histogram takes a lock and walks its buckets per observation: about
    as much as relaying a small command costs. Here an observation is a bisect and two
    additions on the event loop's thread; a scrape (another thread) reads the lists as they
    are. A count a scrape reads may be one command ahead of its sum: harmless for a rate."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = list(buckets)
        self.by_name: dict[str, list[float]] = {}  # name -> counts per bucket, +Inf, sum

    def entry(self, name: str) -> list[float]:
        entry = self.by_name.get(name)
        if entry is None:
            label = command_label(name)
            entry = self.by_name.get(label)
            if entry is None:
                entry = self.by_name[label] = [0.0] * (len(self.bounds) + 2)
            if len(self.by_name) < 4 * len(IMAP_COMMANDS):  # client-chosen names: capped
                self.by_name[name] = entry
        return entry

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["command"])
        seen: set[int] = set()
        for name, entry in list(self.by_name.items()):
            if id(entry) in seen or command_label(name) != name:
                continue  # an alias of its label's entry
            seen.add(id(entry))
            counts = entry[:-1]
            cumulative, buckets = 0.0, []
            for le, count in zip([*map(repr, map(float, self.bounds)), "+Inf"], counts,
                                 strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric([name], buckets, entry[-1])
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=["command"])


COMMANDS = _CommandTimes(
    "mailmux_imap_command_seconds", "IMAP commands by name: count and latency in seconds",
    LATENCY_BUCKETS)
REGISTRY.register(COMMANDS)
LOGINS = counter("mailmux_logins", "logins by protocol and result (ok, failed)",
                 ["protocol", "result"])


def command_label(name: str) -> str:
    upper = name.upper()
    return upper if upper in IMAP_COMMANDS else "OTHER"


def session_opened(protocol: str) -> None:
    SESSIONS.labels(protocol).inc()
    SESSIONS_OPENED.labels(protocol).inc()


def session_closed(protocol: str) -> None:
    SESSIONS.labels(protocol).dec()


def observe_command(name: str, seconds: float) -> None:
    entry = COMMANDS.by_name.get(name) or COMMANDS.entry(name)
    entry[bisect_left(COMMANDS.bounds, seconds)] += 1
    entry[-1] += seconds


def login(protocol: str, ok: bool) -> None:
    LOGINS.labels(protocol, "ok" if ok else "failed").inc()


# The HTTP endpoint ------------------------------------------------------------------------


class MetricsError(OSError):
    """The metrics endpoint could not be started (its port is taken, say)."""


def parse_metrics_listen(value: object, key: str = "metrics_listen") -> tuple[str, int] | None:
    """The optional `metrics_listen` config key: None when absent."""
    if value is None:
        return None
    host, port = parse_address(value, key)
    if host in ("", "*"):
        raise ConfigError(f"{key}: give an explicit host, e.g. '127.0.0.1:9101'")
    return host, port


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `close()` stops its thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(listen: str | tuple[str, int]) -> MetricsServer:
    """Serve REGISTRY on http://listen/metrics ('host:port'; port 0 picks a free port)."""
    host, port = parse_address(listen, "metrics_listen") if isinstance(listen, str) else listen
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise MetricsError(
            exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror or exc}") from exc
    metrics = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", *metrics.address)
    return metrics
