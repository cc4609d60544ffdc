"""Which event loop the gateway runs on (`event_loop` in its config).

Relaying is mostly event-loop work: waking on a socket, a callback, a write. uvloop does that
part in C (measured: about a tenth less CPU per relayed command), so it is offered as an option:
"uvloop", or "auto" to take it when it is installed (`pip install mailmux[fast]`). The default
stays asyncio's own loop, which the whole test suite runs on; the gateway behaves the same on
both (writes to a closed link fail the same way, see `ClientSession.send`).
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
                              "(pip install mailmux[fast])") from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
