"""Text mode: a prompt in, generated text streamed out, on the same engine LMTP uses.

The engine does the decoding (prefill, the KV-cached loop, greedy or seeded sampling, the
penalties) exactly as for an LMTP GENERATE op: a text request becomes one
:class:`~.requests.GenerationRequest` on the formatted prompt's token ids. This module only adds
what text needs around it:

- ``min_new_tokens``: the first tokens are generated with every end-of-sequence id banned (a
  logit bias of -inf), then generation goes on from there as one more engine call, resuming the
  same stream (its tokens and its random generator) the way the engine resumes a stream after a
  failed batch;
- detokenisation and stop sequences (:mod:`.detokenize`): one chunk per decoded piece, never a
  split character, never a stop sequence;
- an end-of-sequence token ends the text and is not part of it.

Problems with the request raise :class:`~.errors.TextInputError`, and a generation that cannot
go on raises :class:`~.errors.TextGenerationError`: Cog then fails the prediction with that
message, which is what Replicate's LLM clients expect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .detokenize import IncrementalDetokenizer, StopSequenceFilter
from .engine import GenerationStream, StreamFailed, TokenEvent
from .errors import TextGenerationError, TextInputError
from .metrics import TextMetrics, record
from .prompt_format import FormattedPrompt, format_prompt
from .requests import GenerationRequest
from .scheduler import BatchScheduler
from .text_request import TextRequest

log = logging.getLogger(__name__)

BANNED = float("-inf")


class TextMode:
    """Generates text for :class:`~.text_request.TextRequest` s, any number at once: their
    streams are decoded by the scheduler, batched with each other and with LMTP work."""

    def __init__(self, scheduler: BatchScheduler, tokenizer: Any) -> None:
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.tokenizer = tokenizer

    def generate(self, request: TextRequest) -> Iterator[str]:
        """Yield the generated text piece by piece, as the tokens come.

        Raises:
            TextInputError: the prompt cannot be formatted, or does not fit the context window.
            TextGenerationError: the model failed to produce a token.
        """
        metrics = TextMetrics()
        prompt = format_prompt(self.tokenizer, request)
        self._check_fits(prompt)
        metrics.input_token_count = len(prompt.token_ids)
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopSequenceFilter(request.stop_sequences)
        ending = "an error"
        events = self._tokens(prompt, request)
        try:
            for event in events:
                metrics.token()
                if event.finish_reason == "stop":
                    ending = "an end-of-sequence token"
                    break  # it ends the text and is not part of it
                piece = stops.push(detokenizer.push(event.token))
                if piece:
                    yield piece
                if stops.stopped:
                    ending = "a stop sequence"
                    break
            else:
                ending = "the token limit or the context window"
            if not stops.stopped:
                # What was held back: an incomplete last character, or a stop sequence's start.
                tail = stops.push(detokenizer.flush())
                tail += stops.flush()
                if tail:
                    yield tail
        finally:
            events.close()  # stop decoding at once when the text ended early
            record(metrics.as_metrics())
            log.info(
                "text prediction: %d prompt tokens (%s), %d new tokens, ended by %s; %.3f s",
                len(prompt.token_ids),
                prompt.formatting,
                metrics.output_token_count,
                ending,
                time.monotonic() - metrics.started,
            )

    def _check_fits(self, prompt: FormattedPrompt) -> None:
        window = self.engine.context_length
        if window is not None and len(prompt.token_ids) > window:
            raise TextInputError(
                f"The prompt is {len(prompt.token_ids)} tokens once formatted, more than the "
                f"model's context window of {window}: shorten the prompt."
            )

    def _tokens(self, prompt: FormattedPrompt, request: TextRequest) -> Iterator[TokenEvent]:
        """Every generated token's event, across the banned-EOS phase and the free one."""
        generation = GenerationRequest(
            prompt=prompt.token_ids, max_tokens=request.max_new_tokens, sampling=request.sampling
        )
        if request.min_new_tokens == 0:
            yield from self._run(GenerationStream(generation))
            return
        banned = tuple((token, BANNED) for token in sorted(self._eos_ids()))
        first = GenerationStream(
            replace(generation, max_tokens=request.min_new_tokens, logit_bias=banned)
        )
        yield from self._run(first)
        # Go on from the same tokens with the same random generator, as one stream would.
        rest = GenerationStream(generation, generated=first.generated, generator=first.generator)
        if self._room_left(rest):
            yield from self._run(rest)

    def _run(self, stream: GenerationStream) -> Iterator[TokenEvent]:
        # Leaving the block early (the text ended) takes the stream out of the batch at once.
        with self.scheduler.run(streams=[stream]) as answers:
            for events in answers:
                for event in events:
                    if isinstance(event, StreamFailed):
                        raise TextGenerationError(event.message)
                    yield event

    def _room_left(self, stream: GenerationStream) -> bool:
        """Whether ``stream`` may take another token: under its limit and inside the window."""
        window = self.engine.context_length
        return stream.wants_tokens and (window is None or len(stream.sequence) < window)

    def _eos_ids(self) -> set[int]:
        return {token for token in self.engine.eos_token_ids if 0 <= token < self.engine.vocab_size}
