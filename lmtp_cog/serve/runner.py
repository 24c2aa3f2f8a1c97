"""Running predictions on the Cog server in arrival order, one thread per prediction.

Cog answers 409 to a prediction while all its slots are busy (as many slots as the model's
``serve.concurrency``, which :class:`~lmtp_cog.cogserver.CogServer` passes to Cog as
``COG_MAX_CONCURRENCY``), so the API keeps its own queue. Each prediction is offered to Cog once
on arrival: an invalid input is refused there and then (Cog checks the input before its
capacity; the API passes the 422 on), a valid one either starts or joins the queue. Only the head of the queue asks again: when a
prediction ends, and every ``retry_interval`` seconds while Cog still says 409 (it frees its slot
a moment after its ``completed`` event; a 409 costs about a millisecond). So predictions start in
the order they came, but for a newcomer landing in that very moment, and each stream carries only
its own prediction's events.

When the Cog server dies (:mod:`.health` notices), :meth:`PredictionRunner.fail_all` fails every
prediction queued or running here with the reason, and every later one is refused at once
(:class:`CogDown`): nothing waits for a server that will never answer.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .cog_client import Busy, CogClient, Rejected, Started
from .prediction import Prediction

log = logging.getLogger(__name__)


class CogRefused(Exception):
    """Cog refused a prediction (422: the input fails the schema); ``status``, ``body``: why."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"Cog answered {status}: {body}")
        self.status = status
        self.body = body


class CogDown(ConnectionError):
    """The Cog server died; ``str()`` is the one sentence that says so (and names its log)."""


class PredictionRunner:
    """Feeds predictions to one Cog server and copies its events into them."""

    def __init__(self, cog: CogClient, *, retry_interval: float = 0.05) -> None:
        self._cog = cog
        self._retry_interval = retry_interval
        self._turn = threading.Condition()
        self._queue: deque[Prediction] = deque()
        self._on_cog: dict[str, Prediction] = {}
        self._down: str | None = None

    def submit(self, prediction: Prediction) -> None:
        """Start ``prediction`` on Cog, or queue it; return once Cog has accepted its input.

        Raises:
            CogRefused: Cog refused the prediction (422 for an input that fails the schema).
            CogDown: the Cog server died (:meth:`fail_all` said so).
            OSError: the Cog server cannot be reached.
        """
        self._check_up()
        answer = self._cog.start(prediction.id, prediction.input)
        if isinstance(answer, Rejected):
            raise CogRefused(answer.status, answer.body)
        with self._turn:
            if self._down is not None:  # died while Cog was being asked
                if isinstance(answer, Started):
                    answer.close()
                raise CogDown(self._down)
            if isinstance(answer, Started):
                self._on_cog[prediction.id] = prediction
            else:
                self._queue.append(prediction)
        if isinstance(answer, Started):
            self._spawn(self._follow, prediction, answer)
        else:
            self._spawn(self._wait_then_follow, prediction)

    def fail_all(self, why: str) -> None:
        """The Cog server is dead: fail what is queued or running with ``why``; refuse the rest."""
        with self._turn:
            self._down = why
            doomed = [*self._queue, *self._on_cog.values()]
            self._queue.clear()
            self._turn.notify_all()
        for prediction in doomed:
            prediction.finish("failed", error=why)

    def _check_up(self) -> None:
        with self._turn:
            if self._down is not None:
                raise CogDown(self._down)

    def cancel(self, prediction: Prediction) -> None:
        """Cancel a queued prediction here, or a running one on Cog; leave a finished one."""
        with self._turn:
            if prediction in self._queue and prediction.id not in self._on_cog:
                self._queue.remove(prediction)
                prediction.finish("canceled")
                self._turn.notify_all()
                return
            on_cog = prediction.id in self._on_cog
        if on_cog and not prediction.done:
            try:
                self._cog.cancel(prediction.id)
            except OSError as error:
                log.warning("could not cancel %s on the Cog server: %s", prediction.id, error)

    def close(self) -> None:
        """Cancel everything queued or running (the server is shutting down)."""
        with self._turn:
            queued = list(self._queue)
            running = list(self._on_cog)
            if self._down is not None:
                return  # fail_all() ended them, and there is nobody left to cancel them on
        for prediction in queued:
            self.cancel(prediction)
        for prediction_id in running:
            try:
                self._cog.cancel(prediction_id)
            except OSError:
                pass

    @staticmethod
    def _spawn(target: Callable[..., None], prediction: Prediction, *args: Any) -> None:
        name = f"prediction-{prediction.id}"
        threading.Thread(target=target, args=(prediction, *args), name=name, daemon=True).start()

    def _wait_then_follow(self, prediction: Prediction) -> None:
        answer: Started | Busy | Rejected | OSError = Busy()
        with self._turn:
            while isinstance(answer, Busy):
                if prediction not in self._queue:
                    return  # canceled while it waited
                if self._queue[0] is not prediction:
                    self._turn.wait()
                    continue
                # Asked under the lock (Cog answers in a few ms): a cancel then finds this
                # prediction either still queued or already on Cog, never in between.
                try:
                    answer = self._cog.start(prediction.id, prediction.input)
                except OSError as error:
                    answer = error
                if isinstance(answer, Busy):
                    self._turn.wait(timeout=self._retry_interval)
            self._queue.popleft()
            if isinstance(answer, Started):
                self._on_cog[prediction.id] = prediction
            self._turn.notify_all()
        if isinstance(answer, Started):
            self._follow(prediction, answer)
        elif isinstance(answer, Rejected):
            prediction.finish("failed", error=f"the Cog server refused the input: {answer.body}")
        else:
            prediction.finish("failed", error=f"the Cog server cannot be reached: {answer}")

    def _follow(self, prediction: Prediction, started: Started) -> None:
        """Copy Cog's events into ``prediction`` until Cog's ``completed`` event."""
        if prediction.done:  # canceled while Cog was being asked
            self._cancel_quietly(prediction.id)
        try:
            for name, data in started.events():
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
            with self._turn:
                self._on_cog.pop(prediction.id, None)
                self._turn.notify_all()

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

    def _cancel_quietly(self, prediction_id: str) -> None:
        try:
            self._cog.cancel(prediction_id)
        except OSError:
            pass
