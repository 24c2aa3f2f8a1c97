"""A wake-up call for the coroutines waiting on some state, such as a prediction's events.

Everything in ./serve runs on one event loop, and the code that changes state (Cog's stream being
copied into a prediction, a cancel, the health watch) does so in plain methods, without an
``await``. ``asyncio.Condition`` cannot be notified from there (its lock must be held, which takes
an ``await``), so a :class:`Pulse` stands in for it: :meth:`Pulse.fire` wakes every coroutine in
:meth:`Pulse.wait`, and each one then looks at the state again.
"""

from __future__ import annotations

import asyncio


class Pulse:
    """Wakes every waiter at once; waiters re-check what they wait for (no value is passed)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        """Wake everyone waiting now; who waits from now on waits for the next fire()."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the next :meth:`fire`; ``False`` if ``timeout`` seconds passed first."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
