"""One prediction's worth of LMTP: parse the batch, hand the ops to the scheduler, stream lines,
never raise.

LMQL learns about failures only from error lines (an exception out of ``predict`` reaches it as
an empty result and an obscure ``IndexError`` later), so everything here answers in band:

- a malformed batch → one ``MSG`` error with a null stream id, and nothing else;
- a bad op → one error line for that op; the others run;
- a batch that fails while computing (e.g. CUDA out of memory) → the scheduler retries its ops
  one by one (:mod:`.scheduler`); those that still fail get an error line.

Order of answers: rejected ops and MODEL_INFO at once, then the SCOREs, then the GENERATE
streams' tokens, each decoding step's tokens as one chunk as soon as they are computed. The
scheduler batches this prediction's ops with those of any other prediction running at the same
time.

Output is coalesced: every chunk carries as many whole lines as it can, so that a batch of
thousands of bad ops is a few chunks, not thousands (coglet's event stream drops events when a
prediction outpaces its reader). The one limit is LMQL's client, which stops reading a chunk at
its first ``MSG`` line: a ``MSG`` line always ends its chunk (:func:`pack_lines`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine import GenerationStream, ScoreResult, StreamFailed, TokenEvent
from .errors import BatchFormatError, describe_exception
from .metrics import LmtpMetrics, record
from .protocol import (
    GenerateOp,
    Limits,
    ModelInfoOp,
    Op,
    RejectedOp,
    ScoreOp,
    StreamId,
    batch_error_line,
    error_line,
    join_lines,
    model_info_line,
    parse_ops_batch,
    token_line,
)
from .scheduler import BatchScheduler

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What one prediction did: its metrics, and its one log line."""

    commands: Counter[str] = field(default_factory=Counter)
    metrics: LmtpMetrics = field(default_factory=LmtpMetrics)
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        ops = ", ".join(f"{count} {name}" for name, count in sorted(self.commands.items()))
        metrics = self.metrics
        tokens = metrics.output_token_count + metrics.scored_token_count
        return (
            f"LMTP prediction: ops {ops or 'none'}; {tokens} tokens; "
            f"{self.failures} failed computations; "
            f"{metrics.prefix_cache_tokens} prompt tokens from the prefix cache; "
            f"{time.monotonic() - self.started:.3f} s"
        )


class LmtpMode:
    """Answers LMTP op batches, any number at once, through one :class:`.BatchScheduler`."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        *,
        model_info: Mapping[str, Any],
        log_predictions: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.model_info = dict(model_info)
        # LMQL's Replicate client parses a prediction's log events as LMTP lines: the summary
        # goes to DEBUG unless the model's settings ask for it.
        self.summary_level = logging.INFO if log_predictions else logging.DEBUG
        self.limits = Limits(
            vocab_size=self.engine.vocab_size, context_length=self.engine.context_length
        )

    def serve(self, ops_batch_json: object) -> Iterator[str]:
        """Yield chunks of whole ``TOKEN``/``MSG`` lines answering ``ops_batch_json``."""
        tally = _Tally()
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
            record(tally.metrics.as_metrics())
            log.log(self.summary_level, "%s", tally.summary())

    def _serve(self, ops_batch_json: object, tally: _Tally) -> Iterator[str]:
        try:
            ops = parse_ops_batch(ops_batch_json, limits=self.limits)
        except BatchFormatError as error:
            tally.commands["invalid batch"] += 1
            yield batch_error_line(error)
            return
        tally.commands.update(_command(op) for op in ops)

        yield from pack_lines(
            self._answer_at_once(op) for op in ops if isinstance(op, RejectedOp | ModelInfoOp)
        )
        scores = [op for op in ops if isinstance(op, ScoreOp)]
        generates = [op for op in ops if isinstance(op, GenerateOp)]
        streams = [GenerationStream(op.request) for op in generates]
        # The engine knows requests, not the client's stream ids (which need not be unique).
        stream_ids: dict[int, StreamId] = {id(op.request): op.stream_id for op in scores}
        stream_ids |= {id(s): op.stream_id for s, op in zip(streams, generates, strict=True)}
        metrics = tally.metrics
        metrics.input_token_count = sum(len(op.request.prompt) for op in [*scores, *generates])
        submission = self.scheduler.run(scores=[op.request for op in scores], streams=streams)
        try:
            for answer in submission:
                if isinstance(answer, ScoreResult):
                    metrics.scored_token_count += len(answer.logprobs)
                    metrics.fed(answer.fed)
                    lines = _score_lines(answer, stream_ids[id(answer.request)])
                else:
                    metrics.output_token_count += sum(isinstance(e, TokenEvent) for e in answer)
                    lines = [_event_line(event, stream_ids[id(event.stream)]) for event in answer]
                if lines:
                    yield join_lines(lines)
        finally:
            submission.close()  # a canceled prediction takes its streams out of the batch
            tally.failures = submission.failures
            for stream in streams:
                metrics.fed(stream.fed)

    def _answer_at_once(self, op: RejectedOp | ModelInfoOp) -> str:
        if isinstance(op, RejectedOp):
            return error_line(op.stream_id, op.error, kind=op.kind)
        return model_info_line(op.stream_id, self.model_info)


def pack_lines(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` in as few chunks as LMQL's client reads whole: every ``TOKEN`` line first, in
    one chunk, which the first ``MSG`` line ends; then each further ``MSG`` line alone."""
    tokens, messages = [], []
    for line in lines:
        (messages if line.startswith("MSG ") else tokens).append(line)
    if tokens or messages:
        yield join_lines(tokens + messages[:1])
    yield from messages[1:]


def _command(op: Op) -> str:
    names = {
        GenerateOp: "GENERATE",
        ScoreOp: "SCORE",
        ModelInfoOp: "MODEL_INFO",
        RejectedOp: "rejected",
    }
    return names[type(op)]


def _event_line(event: TokenEvent | StreamFailed, stream_id: StreamId) -> str:
    if isinstance(event, StreamFailed):
        return error_line(stream_id, event.message)
    return token_line(
        stream_id,
        token=event.token,
        logprob=event.logprob,
        finish_reason=event.finish_reason,
        top_logprobs=event.top_logprobs,
    )


def _score_lines(result: ScoreResult, stream_id: StreamId) -> list[str]:
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
            zip(result.request.scored, result.logprobs, strict=True)
        )
    ]
