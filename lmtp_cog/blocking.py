"""Running a coroutine from blocking code: one event loop thread for the whole process.

The toolkit talks to Cog with aiohttp alone, and aiohttp is async. Blocking callers (the
:class:`~lmtp_cog.cogserver.CogServer` methods used before ./serve's loop runs, scripts and tests
that follow predictions from threads) hand their coroutines to this one loop, which runs on a
daemon thread of its own. It works the same whether or not the caller's thread runs a loop
itself, and a prediction's stream can be followed across calls, since its session lives on
that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the process's blocking loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(work, blocking_loop()).result()


def blocking_loop() -> asyncio.AbstractEventLoop:
    """The loop :func:`run_blocking` uses, on a daemon thread (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="cog-client", daemon=True).start()
        return _loop
