"""Which event loop the gateway runs on (`event_loop` in its config).

Relaying is mostly event-loop work: waking on a socket, a callback, a write. uvloop does that
part in C, and the fast lane (`session/fastlane.py`), which relays small commands from protocol
callbacks, leaves little else: on uvloop a relayed command costs well under half of what it does
on asyncio's own loop. So uvloop is a dependency and the default ("auto": uvloop when it can be
imported, asyncio's loop otherwise); "asyncio" and "uvloop" force one. The gateway behaves the
same on both (writes to a closed link fail the same way, see `ClientSession.send`), and the
tests run on either (MAILMUX_TEST_EVENT_LOOP).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from mailmux.configfile import ConfigError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop_factory(choice: str) -> LoopFactory | None:
    """The loop factory for asyncio.Runner; None: asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop: 'uvloop' is not installed "
                              "(it is one of mailmux's dependencies)") from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
