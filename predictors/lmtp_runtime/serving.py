"""One prediction's worth of LMTP: parse the batch, run ops together, stream lines, never raise.

LMQL learns about failures only from error lines (an exception out of ``predict`` reaches it as
an empty result and an obscure ``IndexError`` later), so everything here answers in band:

- a malformed batch → one ``MSG`` error with a null stream id, and nothing else;
- a bad op → one error line for that op; the others run;
- a batch that fails while computing (e.g. CUDA out of memory) → the prefix cache is emptied
  (its memory may be what the batch lacked), and the streams are retried one by one, each from
  where it stopped; those that still fail get an error line.

Order of answers: rejected ops and MODEL_INFO at once, then SCORE batches, then GENERATE
batches, each step's tokens streamed as one chunk as soon as they are computed. A ``MSG`` line
always travels alone in its chunk: LMQL's client stops reading a chunk after its first ``MSG``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .engine import Engine, GenerationStream, ScoreResult, StreamError, TokenEvent
from .errors import describe_exception
from .protocol import (
    BatchFormatError,
    GenerateOp,
    Limits,
    ModelInfoOp,
    Op,
    RejectedOp,
    ScoreOp,
    batch_error_line,
    error_line,
    join_lines,
    model_info_line,
    parse_ops_batch,
    token_line,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Tally:
    """What one prediction did, for its one INFO log line."""

    commands: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    failures: int = 0
    reused: int = 0
    """Prompt tokens taken from the prefix cache instead of computed."""
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        ops = ", ".join(f"{count} {name}" for name, count in sorted(self.commands.items()))
        return (
            f"LMTP prediction: ops {ops or 'none'}; {self.tokens} tokens; "
            f"{self.failures} failed computations; "
            f"{self.reused} prompt tokens from the prefix cache; "
            f"{time.monotonic() - self.started:.3f} s"
        )


class LmtpServer:
    """Answers LMTP op batches for one engine. One prediction at a time."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_info: Mapping[str, Any],
        max_batch_size: int,
        log_predictions: bool = True,
    ) -> None:
        self.engine = engine
        self.model_info = dict(model_info)
        self.max_batch_size = max_batch_size
        # LMQL's Replicate client parses a prediction's log events as LMTP lines: the summary
        # goes to DEBUG unless the model's settings ask for it.
        self.summary_level = logging.INFO if log_predictions else logging.DEBUG
        self.limits = Limits(vocab_size=engine.vocab_size, context_length=engine.context_length)

    def serve(self, ops_batch_json: object) -> Iterator[str]:
        """Yield chunks of whole ``TOKEN``/``MSG`` lines answering ``ops_batch_json``."""
        tally = _Tally()
        reused_before = self.engine.reused_prompt_tokens
        try:
            yield from self._serve(ops_batch_json, tally)
        except Exception as error:
            # A bug of ours, not of one stream: still answer in band, never fail the prediction.
            log.exception("serving an LMTP batch failed")
            yield error_line(
                None,
                f"internal error in the LMTP runtime ({describe_exception(error)})",
                kind="MSG",
            )
        finally:
            tally.reused = self.engine.reused_prompt_tokens - reused_before
            log.log(self.summary_level, "%s", tally.summary())

    def _serve(self, ops_batch_json: object, tally: _Tally) -> Iterator[str]:
        try:
            ops = parse_ops_batch(ops_batch_json, limits=self.limits)
        except BatchFormatError as error:
            tally.commands["invalid batch"] += 1
            yield batch_error_line(error)
            return
        tally.commands.update(_command(op) for op in ops)

        for op in ops:
            if isinstance(op, RejectedOp | ModelInfoOp):
                yield self._answer_at_once(op)  # alone in its chunk: see the module docstring
        scores = [op for op in ops if isinstance(op, ScoreOp)]
        for group in self._batches(scores, key=lambda op: len(op.prompt) + len(op.scored)):
            yield from self._score(group, tally)
        streams = [GenerationStream(op) for op in ops if isinstance(op, GenerateOp)]
        for group in self._batches(streams, key=lambda stream: len(stream.op.prompt)):
            yield from self._generate(group, tally)

    def _answer_at_once(self, op: RejectedOp | ModelInfoOp) -> str:
        if isinstance(op, RejectedOp):
            return error_line(op.stream_id, op.error, kind=op.kind)
        return model_info_line(op.stream_id, self.model_info)

    def _batches(self, items: Sequence[T], *, key: Callable[[T], int]) -> Iterator[list[T]]:
        """Groups of at most ``max_batch_size``, similar lengths together (less padding)."""
        ordered = sorted(items, key=key)
        for start in range(0, len(ordered), self.max_batch_size):
            yield ordered[start : start + self.max_batch_size]

    def _recover(self, error: Exception, command: str, streams: int) -> None:
        """Log a failed computation (the traceback goes to the log, never into a line) and free
        what memory can be freed before the retry: the prefix cache and what the batch left."""
        log.error("%s batch of %d stream(s) failed", command, streams, exc_info=error)
        self.engine.forget_prefixes()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # SCORE

    def _score(self, ops: list[ScoreOp], tally: _Tally) -> Iterator[str]:
        try:
            results = self.engine.score(ops)
        except Exception as error:
            tally.failures += 1
            self._recover(error, "SCORE", len(ops))
            results = (
                [self._score_alone(op, tally) for op in ops]
                if len(ops) > 1
                else [_failed(ops[0], error)]
            )
        for result in results:
            lines = _score_lines(result)
            tally.tokens += len(result.logprobs)
            if lines:
                yield join_lines(lines)

    def _score_alone(self, op: ScoreOp, tally: _Tally) -> ScoreResult:
        try:
            return self.engine.score([op])[0]
        except Exception as error:
            tally.failures += 1
            self._recover(error, "SCORE", 1)
            return _failed(op, error)

    # GENERATE

    def _generate(self, streams: list[GenerationStream], tally: _Tally) -> Iterator[str]:
        try:
            yield from self._stream_events(streams, tally)
            return
        except Exception as error:
            tally.failures += 1
            self._recover(error, "GENERATE", len(streams))
            if len(streams) == 1:
                yield _stream_failed(streams[0], error)
                return
        # Each unfinished stream goes on alone from the tokens it already sent.
        for stream in streams:
            if stream.finished:
                continue
            try:
                yield from self._stream_events([stream], tally)
            except Exception as error:
                tally.failures += 1
                self._recover(error, "GENERATE", 1)
                yield _stream_failed(stream, error)

    def _stream_events(self, streams: list[GenerationStream], tally: _Tally) -> Iterator[str]:
        for events in self.engine.generate(streams):
            tally.tokens += sum(isinstance(event, TokenEvent) for event in events)
            yield join_lines([_event_line(event) for event in events])


def _command(op: Op) -> str:
    names = {
        GenerateOp: "GENERATE",
        ScoreOp: "SCORE",
        ModelInfoOp: "MODEL_INFO",
        RejectedOp: "rejected",
    }
    return names[type(op)]


def _event_line(event: TokenEvent | StreamError) -> str:
    stream_id = event.stream.op.stream_id
    if isinstance(event, StreamError):
        return error_line(stream_id, event.message)
    return token_line(
        stream_id,
        token=event.token,
        logprob=event.logprob,
        finish_reason=event.finish_reason,
        top_logprobs=event.top_logprobs,
    )


def _score_lines(result: ScoreResult) -> list[str]:
    stream_id = result.op.stream_id
    if result.error is not None:
        return [error_line(stream_id, result.error)]
    last = len(result.logprobs) - 1
    return [
        token_line(
            stream_id,
            token=token,
            logprob=logprob,
            finish_reason="stop" if index == last else None,
            top_logprobs={token: logprob},
        )
        for index, (token, logprob) in enumerate(
            zip(result.op.scored, result.logprobs, strict=True)
        )
    ]


def _failed(op: ScoreOp, error: Exception) -> ScoreResult:
    return ScoreResult(op, error=f"computing this stream failed ({describe_exception(error)})")


def _stream_failed(stream: GenerationStream, error: Exception) -> str:
    stream.finished = True
    return error_line(
        stream.op.stream_id, f"computing this stream failed ({describe_exception(error)})"
    )
