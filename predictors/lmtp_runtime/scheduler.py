"""Batching across predictions: many predictions at once, one thread running the model.

With ``concurrency`` above 1, Cog runs several predictions at the same time, each in a thread of
its own (our ``predict`` is a coroutine returning a sync generator, which coglet 0.23 iterates in
a worker thread and streams; ``bench/coglet_probe.py`` measures it). Each prediction hands its
work to the one :class:`BatchScheduler`, and only the scheduler's thread runs the model, so the
work of all of them shares forward passes:

- SCOREs waiting when a round starts run together, in batches of ``max_batch_size`` (the
  candidates of a ``distribution`` sent as separate predictions become one forward pass);
- GENERATE streams decode together, up to ``max_batch_size`` rows. Work that arrives while a
  batch decodes joins at the next step: the batch is stopped between two steps, every unfinished
  row's KV goes to the prefix cache (:meth:`.Engine.generate`), and the next round feeds each
  resumed row one token on top of it. Without a prefix cache that would recompute whole
  sequences, so then a batch runs to its end and newcomers wait for it.

A batch that fails (e.g. CUDA out of memory) empties the prefix cache and its work is retried
one op at a time; what still fails is answered with an error for that op alone, so one
prediction's bad luck never fails another's streams.

A prediction reads its answers from a queue, in order: each SCORE's result, then one list of
events per decoding step that produced any for its streams. It never waits forever: if the
scheduler's thread is gone, it gets :class:`SchedulerStopped`. A prediction that stops reading
(canceled, or a text prediction that hit a stop sequence) takes its streams out of the batch at
the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from .engine import Engine, GenerationStream, ScoreResult, StreamFailed, TokenEvent
from .errors import SchedulerStopped, describe_exception
from .requests import ScoreRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

StepEvents = list[TokenEvent | StreamFailed]
"""One decoding step's events for the streams of one prediction."""

Answer = ScoreResult | StepEvents
"""What a prediction reads back: a SCORE's result, or a step's events for its streams."""

POLL_S = 0.5
"""How often a waiting prediction checks that the scheduler's thread is still there."""


@dataclass(eq=False)
class Job:
    """One prediction's work, and the queue its answers go to."""

    scores: list[ScoreRequest]
    streams: list[GenerationStream]
    answers: queue.SimpleQueue[Answer | _Done] = field(default_factory=queue.SimpleQueue)
    canceled: threading.Event = field(default_factory=threading.Event)
    failures: int = 0
    """Batches holding this job's work that failed and were retried."""
    _open: int = 0
    """SCOREs not answered yet plus streams not finished yet (the scheduler's count)."""
    _done: bool = False


@dataclass(frozen=True)
class _Done:
    """The last item of a job's queue; ``error`` says why it ended early, if it did."""

    error: str | None = None


class Submission:
    """One prediction's work on the scheduler: iterate it for the answers, in order.

    Closing it before its end (or leaving the ``with`` block) cancels what is left of the work.
    """

    def __init__(self, job: Job, answers: Generator[Answer, None, None]) -> None:
        self._job = job
        self._answers = answers

    @property
    def failures(self) -> int:
        """Batches holding this work that failed and were retried, op by op."""
        return self._job.failures

    def __iter__(self) -> Submission:
        return self

    def __next__(self) -> Answer:
        return next(self._answers)

    def close(self) -> None:
        self._answers.close()

    def __enter__(self) -> Submission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchScheduler:
    """Runs the engine in one thread for any number of concurrent predictions."""

    def __init__(self, engine: Engine, *, max_batch_size: int) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self._lock = threading.Condition()
        self._incoming: list[Job] = []
        self._closing = False
        self._scores: list[tuple[Job, ScoreRequest]] = []
        self._waiting: list[tuple[Job, GenerationStream]] = []
        """Streams waiting for a row, first come first served (the model thread's own list)."""
        self._in_round: list[Job] = []
        """The jobs whose work the current round took out of the lists above."""
        self._thread = threading.Thread(target=self._serve_forever, name="lmtp-model", daemon=True)
        self._thread.start()

    # --- the predictions' side -------------------------------------------------------------------

    def run(
        self, *, scores: Sequence[ScoreRequest] = (), streams: Sequence[GenerationStream] = ()
    ) -> Submission:
        """Submit this work now: the handle iterates its answers as the model produces them.

        Raises:
            SchedulerStopped: the scheduler's thread is gone (now, or while iterating).
        """
        job = Job(list(scores), list(streams))
        if not job.scores and not any(stream.wants_tokens for stream in job.streams):
            return Submission(job, _no_answers())
        self._submit(job)
        return Submission(job, self._answers(job))

    def _answers(self, job: Job) -> Generator[Answer, None, None]:
        try:
            while True:
                answer = self._next_answer(job)
                if isinstance(answer, _Done):
                    if answer.error is not None:
                        raise SchedulerStopped(answer.error)
                    return
                yield answer
        finally:
            job.canceled.set()  # a no-op once the job is done

    def close(self, *, timeout: float = 10.0) -> None:
        """Stop the thread once the work it already has is done."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout)

    def _submit(self, job: Job) -> None:
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise SchedulerStopped("the model thread is not running")
            self._incoming.append(job)
            self._lock.notify()

    def _next_answer(self, job: Job) -> Answer | _Done:
        while True:
            try:
                return job.answers.get(timeout=POLL_S)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise SchedulerStopped("the model thread stopped") from None

    # --- the model thread ------------------------------------------------------------------------

    def _serve_forever(self) -> None:
        while self._take_incoming(block=True):
            try:
                self._round()
            except Exception as error:  # a bug of ours: fail this round's jobs, keep serving
                log.exception("a scheduling round failed")
                self._fail_everything(
                    f"internal error in the scheduler ({describe_exception(error)})"
                )
        self._fail_everything("the model thread was closed")

    def _take_incoming(self, *, block: bool) -> bool:
        """Move submitted jobs' work into the model thread's lists; ``False`` once closed."""
        with self._lock:
            while block and not self._incoming and not self._has_work() and not self._closing:
                self._lock.wait()
            if self._closing and not self._incoming and not self._has_work():
                return False
            jobs, self._incoming = self._incoming, []
        for job in jobs:
            job._open = len(job.scores) + sum(stream.wants_tokens for stream in job.streams)
            self._scores += [(job, op) for op in job.scores]
            self._waiting += [(job, stream) for stream in job.streams if stream.wants_tokens]
        return True

    def _has_work(self) -> bool:
        return bool(self._scores or self._waiting)

    def _round(self) -> None:
        """Every waiting SCORE, then up to ``max_batch_size`` streams decoding together."""
        self._drop_canceled()
        scores, self._scores = self._scores, []
        rows = self._waiting[: self.max_batch_size]
        self._waiting = self._waiting[self.max_batch_size :]
        self._in_round = [job for job, _ in scores] + [job for job, _ in rows]
        for group in _groups(scores, self.max_batch_size, key=lambda item: _score_length(item[1])):
            self._score(group)
        if rows:
            self._decode(sorted(rows, key=lambda item: len(item[1].sequence)))
        self._in_round = []

    def _drop_canceled(self) -> None:
        self._scores = [(job, op) for job, op in self._scores if not job.canceled.is_set()]
        self._waiting = [(job, s) for job, s in self._waiting if not job.canceled.is_set()]

    # SCORE

    def _score(self, group: list[tuple[Job, ScoreRequest]]) -> None:
        ops = [op for _, op in group]
        try:
            results = self.engine.score(ops)
        except Exception as error:
            self._recover(error, "SCORE", [job for job, _ in group])
            if len(group) == 1:
                results = [_failed_score(ops[0], error)]
            else:
                results = [self._score_alone(job, op) for job, op in group]
        for (job, _), result in zip(group, results, strict=True):
            self._deliver(job, result, closed=1)

    def _score_alone(self, job: Job, op: ScoreRequest) -> ScoreResult:
        try:
            return self.engine.score([op])[0]
        except Exception as error:
            self._recover(error, "SCORE", [job])
            return _failed_score(op, error)

    # GENERATE

    def _decode(self, rows: list[tuple[Job, GenerationStream]]) -> None:
        """Decode these rows until they finish or new work should join them."""
        owner = {id(stream): job for job, stream in rows}
        try:
            self._decode_steps(rows, owner)
        except Exception as error:
            self._recover(error, "GENERATE", [job for job, _ in rows])
            unfinished = [(job, stream) for job, stream in rows if not stream.finished]
            if len(rows) == 1:
                for job, stream in unfinished:
                    self._end_stream(job, stream, error)
            else:
                for job, stream in unfinished:
                    self._decode_alone(job, stream, owner)
        # Rows stopped early go back in front of the queue, in their order.
        self._waiting = [(job, s) for job, s in rows if not s.finished] + self._waiting

    def _decode_alone(self, job: Job, stream: GenerationStream, owner: dict[int, Job]) -> None:
        """Go on with one stream of a failed batch, from the tokens it already sent."""
        try:
            self._decode_steps([(job, stream)], owner, preempt=False)
        except Exception as error:
            self._recover(error, "GENERATE", [job])
            if not stream.finished:
                self._end_stream(job, stream, error)

    def _decode_steps(
        self,
        rows: list[tuple[Job, GenerationStream]],
        owner: dict[int, Job],
        *,
        preempt: bool = True,
    ) -> None:
        steps = self.engine.generate([stream for _, stream in rows])
        try:
            for events in steps:
                by_job: dict[Job, StepEvents] = {}
                for event in events:
                    by_job.setdefault(owner[id(event.stream)], []).append(event)
                for job, job_events in by_job.items():
                    finished = sum(event.stream.finished for event in job_events)
                    self._deliver(job, job_events, closed=finished)
                self._cancel_rows(rows)
                if preempt and self._should_preempt(rows):
                    return  # closing `steps` keeps the unfinished rows' KV (Engine.generate)
        finally:
            steps.close()

    def _cancel_rows(self, rows: list[tuple[Job, GenerationStream]]) -> None:
        """Finish the streams of canceled jobs: the engine drops them before its next step."""
        for job, stream in rows:
            if job.canceled.is_set():
                stream.finished = True

    def _should_preempt(self, rows: list[tuple[Job, GenerationStream]]) -> bool:
        """Stop this batch so that waiting work can join it at the next step?

        Only when resuming is cheap (a prefix cache), and only for work that gains: new SCOREs
        (one forward pass each, which would otherwise wait for the whole generation), or
        streams while the batch has a free row.
        """
        if not self.engine.resumes_cheaply or all(stream.finished for _, stream in rows):
            return False
        self._take_incoming(block=False)
        if self._scores:
            return True
        free = self.max_batch_size - sum(not stream.finished for _, stream in rows)
        return free > 0 and any(not job.canceled.is_set() for job, _ in self._waiting)

    def _end_stream(self, job: Job, stream: GenerationStream, error: Exception) -> None:
        stream.finished = True
        self._deliver(job, [StreamFailed(stream, _failure(error))], closed=1)

    # answers and failures

    def _deliver(self, job: Job, answer: Answer, *, closed: int) -> None:
        """Queue ``answer`` for ``job``, which has ``closed`` fewer ops open after it."""
        if job._done:
            return
        if not job.canceled.is_set():
            job.answers.put(answer)
        job._open -= closed
        if job._open <= 0:
            job._done = True
            job.answers.put(_Done())

    def _recover(self, error: Exception, command: str, jobs: Sequence[Job]) -> None:
        """Log a failed batch (the traceback goes to the log, never into a line) and free what
        memory can be freed before the retry: the prefix cache and what the batch left."""
        log.error("%s batch of %d op(s) failed", command, len(jobs), exc_info=error)
        for job in set(jobs):
            job.failures += 1
        self.engine.forget_prefixes()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _fail_everything(self, message: str) -> None:
        """End every job the thread knows of with ``message`` (only after a bug, or at close)."""
        with self._lock:
            jobs, self._incoming = self._incoming, []
        jobs += (
            self._in_round + [job for job, _ in self._scores] + [job for job, _ in self._waiting]
        )
        self._scores, self._waiting, self._in_round = [], [], []
        for job in dict.fromkeys(jobs):
            if not job._done:
                job._done = True
                job.answers.put(_Done(error=message))


def _no_answers() -> Generator[Answer, None, None]:
    """The answers to no work: an iterator that can be closed like the others."""
    yield from ()


def _groups(items: list[T], size: int, *, key: Callable[[T], int]) -> Iterator[list[T]]:
    """Groups of at most ``size``, similar lengths together (less padding)."""
    ordered = sorted(items, key=key)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def _score_length(request: ScoreRequest) -> int:
    return len(request.prompt) + len(request.scored)


def _failed_score(request: ScoreRequest, error: Exception) -> ScoreResult:
    return ScoreResult(request, error=_failure(error))


def _failure(error: Exception) -> str:
    """The error line's text for an op whose computation failed, alone too."""
    return f"computing this stream failed ({describe_exception(error)})"
