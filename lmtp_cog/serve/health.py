"""Watching the Cog server while it serves, so that its death never goes unnoticed.

Cog's HTTP server runs the model in a worker process. When the worker dies (killed, out of
memory, a crash in native code), coglet 0.23.1 keeps its server up: it fails the running
prediction, answers the next one "Broken pipe", and every later one 409 (its slots are poisoned
for good), so that a prediction queued here would wait forever. What it does report is its
``/health-check`` status: ``UNHEALTHY`` from then on. So a task on ./serve's event loop asks
about once a second (through the same :class:`~.cog_client.AsyncCogClient` as the predictions), and
also watches the server process itself; the first sign of death is reported once, as one
sentence naming the log, and ./serve stops (it does not restart the server: setup() takes
minutes, and a supervisor that restarts ./serve does the same more simply).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from ..cogserver import HEALTHY, CogServer
from .cog_client import AsyncCogClient

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the server is asked; a dead worker is noticed within about two of these."""

DEAD_STATUSES = frozenset({"UNHEALTHY", "DEFUNCT"})
"""``/health-check`` statuses of a server whose worker is gone (``DEFUNCT``: coglet gave up)."""

CONFIRMATIONS = 2
"""Answers in a row that a dead status needs: one odd answer is not enough to stop ./serve."""

UNREACHABLE_POLLS = 5
"""Polls in a row without an answer (the process still running) after which the server is dead."""


class CogWatch:
    """A task that calls ``on_death(why)`` once, on the loop, when the Cog server or its worker
    dies; :meth:`wait` tells any thread.

    ``why`` is one sentence naming the server's log, fit for the user and for the predictions
    that fail because of it.
    """

    def __init__(
        self,
        cog: CogServer,
        client: AsyncCogClient,
        *,
        on_death: Callable[[str], None],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._cog = cog
        self._client = client
        self._on_death = on_death
        self._poll_seconds = poll_seconds
        self._dead = threading.Event()
        self._why = ""
        self._dead_answers = 0
        """Answers in a row with a status of :data:`DEAD_STATUSES`."""
        self._unanswered = 0
        """Polls in a row that got no answer."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching; on the loop."""
        self._task = asyncio.create_task(self._run(), name="cog-watch")

    async def stop(self) -> None:
        """Stop watching (before the server is stopped on purpose); on the loop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wait(self, timeout: float | None = None) -> str | None:
        """Why the server died, once it did; ``None`` if ``timeout`` seconds passed first.

        From any thread.
        """
        return self._why if self._dead.wait(timeout) else None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                why = await self._check()
            except Exception:  # a bug here must not end the watch unnoticed
                log.exception("checking the Cog server's health failed")
                continue
            if why is not None:
                self._why = why
                self._on_death(why)  # first: wait() returns once the predictions have failed
                self._dead.set()
                return

    async def _check(self) -> str | None:
        """Why the server is dead, or ``None`` while it is alive (or not proven dead yet)."""
        process = self._cog.process
        if process is not None and process.poll() is not None:
            return self._exited(process.returncode)
        try:
            health = await self._client.health(timeout=max(2.0, self._poll_seconds))
        except OSError as error:
            self._unanswered += 1
            log.debug("the Cog server did not answer /health-check: %s", error)
            return self._unreachable(error) if self._unanswered >= UNREACHABLE_POLLS else None
        status = str(health.get("status"))
        self._unanswered = 0
        self._dead_answers = self._dead_answers + 1 if status in DEAD_STATUSES else 0
        if status not in HEALTHY:
            log.debug("the Cog server reports %s", status)
        return self._worker_died(status) if self._dead_answers >= CONFIRMATIONS else None

    def _exited(self, status: int) -> str:
        return (
            f"the Cog server of {self._cog.project_dir.name} exited with status {status} "
            f"while serving; see {self._cog.log_path}."
        )

    def _worker_died(self, status: str) -> str:
        return (
            f"the Cog worker of {self._cog.project_dir.name} died while serving (Cog reports "
            f"{status}); see {self._cog.log_path}."
        )

    def _unreachable(self, error: OSError) -> str:
        seconds = UNREACHABLE_POLLS * self._poll_seconds
        return (
            f"the Cog server of {self._cog.project_dir.name} has not answered for {seconds:.0f} s "
            f"({error}); see {self._cog.log_path}."
        )
