"""Running predictions on the Cog server in arrival order, one task per prediction.

Cog answers 409 to a prediction while all its slots are busy (as many slots as the model's
``serve.concurrency``, which :class:`~lmtp_cog.cogserver.CogServer` passes to Cog as
``COG_MAX_CONCURRENCY``), so ./serve keeps its own queue, shared by every front end (the
Replicate-compatible API, the LMTP websocket, the OpenAI-compatible API). Each prediction is
offered to Cog once on arrival: an invalid input is refused there and then (Cog checks the input
before its capacity; the API passes the 422 on), a valid one either starts or joins the queue.
Only the head of the queue asks again: when a prediction ends, and every ``retry_interval``
seconds while Cog still says 409 (it frees its slot a moment after its ``completed`` event; a 409
costs about a millisecond). So predictions start in the order they came, but for a newcomer
landing in that very moment, and each stream carries only its own prediction's events.

When the Cog server dies (:mod:`.health` notices), :meth:`PredictionRunner.fail_all` fails every
prediction queued or running here with the reason, and every later one is refused at once
(:class:`CogDown`): nothing waits for a server that will never answer.

Everything here runs on ./serve's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from .cog_client import AsyncCogClient, AsyncStarted, Busy, Rejected
from .errors import CogDown, CogRefused, CogUnreachable
from .prediction import Prediction
from .pulse import Pulse

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Seconds :meth:`PredictionRunner.close` gives Cog to end what it canceled."""


class PredictionRunner:
    """Feeds predictions to one Cog server and copies its events into them."""

    def __init__(self, cog: AsyncCogClient, *, retry_interval: float = 0.05) -> None:
        self._cog = cog
        self._retry_interval = retry_interval
        self._turn = Pulse()
        """Fired whenever the queue or Cog's slots change: the head of the queue may ask again."""
        self._queue: deque[Prediction] = deque()
        self._on_cog: dict[str, Prediction] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._down: str | None = None

    async def submit(self, prediction: Prediction) -> None:
        """Start ``prediction`` on Cog, or queue it; return once Cog has accepted its input.

        Raises:
            CogRefused: Cog refused the prediction (422 for an input that fails the schema).
            CogDown: the Cog server died (:meth:`fail_all` said so).
            CogUnreachable: the Cog server cannot be reached.
        """
        self._check_up()
        try:
            answer = await self._cog.start(prediction.id, prediction.input)
        except OSError as error:
            raise _unreachable(error) from error
        if isinstance(answer, Rejected):
            raise CogRefused(answer.status, answer.body)
        if self._down is not None:  # died while Cog was being asked
            if isinstance(answer, AsyncStarted):
                answer.close()
            raise CogDown(self._down)
        if isinstance(answer, AsyncStarted):
            self._on_cog[prediction.id] = prediction
            self._spawn(self._follow(prediction, answer), prediction)
        else:
            self._queue.append(prediction)
            self._spawn(self._wait_then_follow(prediction), prediction)

    def fail_all(self, why: str) -> None:
        """The Cog server is dead: fail what is queued or running with ``why``; refuse the rest."""
        self._down = why
        doomed = [*self._queue, *self._on_cog.values()]
        self._queue.clear()
        self._turn.fire()
        for prediction in doomed:
            prediction.finish("failed", error=why)

    def _check_up(self) -> None:
        if self._down is not None:
            raise CogDown(self._down)

    async def cancel(self, prediction: Prediction) -> None:
        """Cancel a queued prediction here, or a running one on Cog; leave a finished one."""
        if prediction in self._queue:
            # Also while its turn has come and Cog is being asked: the asking task sees that it
            # left the queue, and cancels it on Cog if Cog took it.
            self._queue.remove(prediction)
            prediction.finish("canceled")
            self._turn.fire()
            return
        if prediction.id in self._on_cog and not prediction.done:
            await self._cancel_on_cog(prediction.id)

    async def close(self) -> None:
        """Cancel everything queued or running (the server is shutting down), and wait a little
        for Cog to end it."""
        if self._down is None:  # else fail_all() ended them, and nobody is left to cancel them on
            for prediction in list(self._queue):
                await self.cancel(prediction)
            for prediction_id in list(self._on_cog):
                await self._cancel_on_cog(prediction_id, quiet=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    def _spawn(self, work: Coroutine[Any, Any, None], prediction: Prediction) -> None:
        # The loop keeps only weak references to tasks: keep each until it ends.
        task = asyncio.create_task(work, name=f"prediction-{prediction.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_then_follow(self, prediction: Prediction) -> None:
        answer: AsyncStarted | Busy | Rejected | CogUnreachable = Busy()
        while isinstance(answer, Busy):
            if prediction not in self._queue:
                return  # canceled while it waited
            if self._queue[0] is not prediction:
                await self._turn.wait()
                continue
            try:
                answer = await self._cog.start(prediction.id, prediction.input)
            except OSError as error:
                answer = _unreachable(error)
            if isinstance(answer, Busy):
                await self._turn.wait(timeout=self._retry_interval)
        if prediction not in self._queue:  # canceled (or failed) while Cog was being asked
            if isinstance(answer, AsyncStarted):
                answer.close()
                await self._cancel_on_cog(prediction.id)
            return
        self._queue.remove(prediction)
        if isinstance(answer, AsyncStarted):
            self._on_cog[prediction.id] = prediction
        self._turn.fire()
        if isinstance(answer, AsyncStarted):
            await self._follow(prediction, answer)
        elif isinstance(answer, Rejected):
            prediction.finish("failed", error=f"the Cog server refused the input: {answer.body}")
        else:
            prediction.finish("failed", error=str(answer))

    async def _follow(self, prediction: Prediction, started: AsyncStarted) -> None:
        """Copy Cog's events into ``prediction`` until Cog's ``completed`` event."""
        if prediction.done:  # canceled while Cog was being asked
            await self._cancel_on_cog(prediction.id)
        try:
            async for name, data in started.events():
                if name == "start":
                    prediction.mark_processing()
                elif name == "log":
                    prediction.add_logs(str(data.get("data", "")))
                elif name == "output":
                    prediction.add_output(data.get("chunk"))
                elif name == "completed":
                    prediction.mark_processing()
                    self._complete(prediction, data)
                    break
        except OSError as error:
            if not prediction.done:  # else fail_all() already said why
                log.warning("lost the Cog stream of %s: %s", prediction.id, error)
        finally:
            started.close()
            if not prediction.done:
                prediction.finish(
                    "failed", error="the Cog server closed the stream before the prediction ended"
                )
            self._on_cog.pop(prediction.id, None)
            self._turn.fire()

    @staticmethod
    def _complete(prediction: Prediction, data: dict[str, Any]) -> None:
        # Cog's final output is authoritative: add any chunk the stream did not carry.
        final = data.get("output")
        if isinstance(final, list):
            for chunk in final[len(prediction.output or []) :]:
                prediction.add_output(chunk)
        status = data.get("status")
        if status not in ("succeeded", "failed", "canceled"):
            status = "failed"
        prediction.finish(status, error=data.get("error"), metrics=data.get("metrics"))

    async def _cancel_on_cog(self, prediction_id: str, *, quiet: bool = False) -> None:
        try:
            await self._cog.cancel(prediction_id)
        except OSError as error:
            if not quiet:
                log.warning("could not cancel %s on the Cog server: %s", prediction_id, error)


def _unreachable(error: OSError) -> CogUnreachable:
    return CogUnreachable(f"the Cog server cannot be reached: {error}")
