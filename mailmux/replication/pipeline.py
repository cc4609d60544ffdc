"""Pipelined requests on a peer link: many batches in flight, answers matched in order.

A link used to send one batch and wait for its acknowledgement before sending the next, so a
change committed while a batch was on the wire waited for that whole round trip first, and the
peer applied (and fsync'd) each batch alone. With requests pipelined, the dialler sends a batch
as soon as changes commit, up to `MAX_IN_FLIGHT` unanswered; the listener starts applying each
batch as it arrives, so batches that arrive together share one group commit (one fsync) in the
peer's writer, and it answers strictly in arrival order. Answers carry no request id: the
listener's `Responder` keeps the order, the dialler's `Requests` relies on it.

A link that fails (a read deadline, a bad frame, an apply that raised) fails every request
still waiting on it; the dialler reconnects and starts again from the positions the peer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8  # batches sent and not yet acknowledged, per link
Message = dict[str, Any]


class PipelineClosed(Exception):
    """The link under the pipeline failed; every request still waiting gets this."""


class Wire(Protocol):
    async def send(self, message: Message) -> None: ...

    async def receive(self, timeout: float | None = None) -> Message: ...


class Requests:
    """The dialler's side: send requests without waiting, get each answer as a future."""

    def __init__(self, wire: Wire, answer_timeout: float) -> None:
        self._wire = wire
        self._timeout = answer_timeout
        self._waiting: deque[asyncio.Future[Message]] = deque()
        self._some_waiting = asyncio.Event()
        self._failed: BaseException | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_answers())

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def send(self, message: Message) -> asyncio.Future[Message]:
        if self._failed is not None:
            raise PipelineClosed(str(self._failed))
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._some_waiting.set()
        await self._wire.send(message)
        return future

    async def ask(self, message: Message) -> Message:
        return await (await self.send(message))

    async def _read_answers(self) -> None:
        try:
            while True:
                if not self._waiting:
                    self._some_waiting.clear()
                    await self._some_waiting.wait()
                # Every answer has a deadline while something waits for one: a hung peer
                # keeps its TCP link open and would otherwise never be noticed.
                answer = await self._wire.receive(self._timeout)
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except asyncio.CancelledError:
            self._fail(PipelineClosed("link closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(PipelineClosed(str(exc) or type(exc).__name__))
                future.exception()  # whoever holds it sees it; asyncio need not log it

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Responder:
    """The listener's side: answers computed concurrently, sent in the order asked.

    `push` takes an awaitable that was already started (a task), so the work of several
    requests overlaps; the answers still leave in arrival order."""

    def __init__(self, wire: Wire, on_failure: Callable[[], None]) -> None:
        self._wire = wire
        self._queue: asyncio.Queue[asyncio.Future[Message]] = asyncio.Queue(MAX_IN_FLIGHT * 2)
        self._working: set[asyncio.Future[Message]] = set()  # answers not computed yet
        self._sender = asyncio.get_running_loop().create_task(self._send_answers())
        # A failed answer ends the link: the caller closes the connection so its reader,
        # waiting for the next request, stops too.
        self._sender.add_done_callback(lambda _: on_failure())

    async def push(self, answer: Awaitable[Message]) -> None:
        """Queue an answer whose work may overlap with the answers queued before it."""
        if self._sender.done():
            if inspect.iscoroutine(answer):
                answer.close()  # never to run: said so, instead of "never awaited"
            raise PipelineClosed("the answer sender stopped")
        future = asyncio.ensure_future(answer)
        self._working.add(future)
        future.add_done_callback(self._working.discard)
        # A full queue waits here, which stops reading more requests: bounded memory.
        await self._queue.put(future)

    async def push_after(self, answer: Callable[[], Awaitable[Message]]) -> None:
        """Queue an answer computed only once every answer before it is done (for example
        the positions held, which must include the batches asked to apply before)."""
        before = set(self._working)

        async def later() -> Message:
            if before:
                await asyncio.wait(before)
            return await answer()

        await self.push(later())

    async def _send_answers(self) -> None:
        while True:
            pending = await self._queue.get()
            try:
                answer = await pending
            except Exception as exc:
                log.warning("replication: a request failed; closing the link: %s: %s",
                            type(exc).__name__, exc)
                raise
            await self._wire.send(answer)

    async def close(self) -> None:
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._sender
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending

