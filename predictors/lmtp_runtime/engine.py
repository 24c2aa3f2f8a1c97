"""Run the model: batched prefill, a KV-cached decode loop, and scoring (LMTP.md §2, §3, §6).

Batches are left-padded: every row ends at the last column, so "the next token" is the last
position for all rows at once. Padding must not change any row's numbers, which takes two
things: an attention mask (padded columns are never attended to) and explicit position ids
counted over each row's *own* tokens. Models do not derive positions from the mask (GPT-2 on
transformers 5 does not at all), so without them a padded row would be shifted and its logits
would differ from the same op run alone.

The decode loop owns its KV cache (a transformers ``DynamicCache`` passed as
``past_key_values``); ``model.generate`` is never called, so the checkpoint's
generation_config.json cannot change decoding.

Across predictions, the engine keeps the KV of the sequences it has fed in a
:class:`~.prefix_cache.PrefixCache`. A row whose prompt starts with a cached sequence feeds only
the rest: its cached prefix is laid out left-padded in front of the batch's (also left-padded)
new tokens, so a batch mixing hits and misses is still one forward pass::

    row with a hit:   [pad][cached prefix][pad][new tokens]
    row without:      [pad             ][pad][whole prompt]

The attention mask may thus have a hole in the middle of a row; position ids counted from the
mask, as for left padding, keep every row's numbers those of the row alone.

Rows of one batch that share a long prefix the cache does not hold yet (``distribution``'s
SCOREs of one prompt, ``sample(n=k)``'s streams) would each compute it; instead it is computed
once as a row of its own and cached first, so every such row starts from a hit.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .prefix_cache import (
    MIB,
    KeysValues,
    PrefixCache,
    PrefixHit,
    budget_bytes,
    shared_prefixes,
    supports_prefix_reuse,
)
from .protocol import FinishReason
from .requests import GenerationRequest, ScoreRequest
from .sampling import LOGPROB_FLOOR, BatchSampler, Choice, make_generator

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 16
"""Rows of one batch that share at least this many uncached leading tokens have them computed
once, as a row of their own, before the batch (see :meth:`Engine._share_prefixes`). Below it,
the extra forward pass would cost about what it saves."""

NAN_MESSAGE = (
    "the model produced NaN logits (a numerical overflow; loading it with torch_dtype "
    "'bfloat16' or 'float32' usually avoids this)"
)


# --- per-stream state and results ----------------------------------------------------------------


@dataclass
class GenerationStream:
    """One generation request's progress.

    It outlives the batch it runs in: after a batch failure the stream goes on alone from the
    tokens it already sent, with the same random generator (LMTP.md §5).
    """

    request: GenerationRequest
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    finished: bool = False
    fed: FedTokens = field(default_factory=lambda: FedTokens())
    """What feeding its sequence cost, over every batch it ran in (for the metrics)."""

    @property
    def sequence(self) -> list[int]:
        return [*self.request.prompt, *self.generated]

    @property
    def wants_tokens(self) -> bool:
        return not self.finished and len(self.generated) < self.request.max_tokens


@dataclass
class FedTokens:
    """Prompt tokens an op fed the model: ``computed`` by a forward pass, or ``reused`` from the
    prefix cache (a prefix several rows of one batch share is computed once, and counts as
    reused for each of them)."""

    computed: int = 0
    reused: int = 0

    def add(self, *, fed: int, reused: int) -> None:
        self.computed += fed - reused
        self.reused += reused


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one stream."""

    stream: GenerationStream
    token: int
    logprob: float
    top_logprobs: dict[int, float]
    finish_reason: FinishReason


@dataclass(frozen=True)
class StreamFailed:
    """A stream that cannot go on; it is finished."""

    stream: GenerationStream
    message: str


@dataclass(frozen=True)
class ScoreResult:
    """The log-probabilities of one score request's tokens, or why there are none."""

    request: ScoreRequest
    logprobs: tuple[float, ...] = ()
    error: str | None = None
    fed: FedTokens = field(default_factory=lambda: FedTokens())


# --- padding and the decode batch -----------------------------------------------------------------


def left_pad(
    sequences: Sequence[Sequence[int]], *, device: torch.device | str, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` for left-padded ``sequences``.

    Position ids count each row's own tokens from 0; padded columns get position 0 (they are
    masked, so any valid position will do).
    """
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            input_ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            attention_mask[row, width - len(sequence) :] = 1
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device)


class DecodeBatch:
    """Left-padded rows decoding in lockstep. It owns their KV cache.

    Column ``j`` of the attention mask and of the cache is the same for every row; a row's
    position ids count only its unmasked columns. Finished rows are dropped with :meth:`keep`
    so they cost nothing; the cache object stays available for reuse by later work.
    """

    def __init__(
        self,
        model: Any,
        *,
        cache: DynamicCache,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        self.model = model
        self.cache = cache
        self.attention_mask = attention_mask
        self.lengths = lengths
        """``[rows]``: tokens each row has fed so far, which is also its next position id."""

    @classmethod
    def prefill(
        cls,
        model: Any,
        sequences: Sequence[Sequence[int]],
        *,
        device: torch.device,
        prefixes: Sequence[PrefixHit | None] | None = None,
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts; return the batch and each row's next-token logits, ``[rows, vocab]``."""
        batch, logits = cls.feed(model, sequences, device=device, prefixes=prefixes, keep=1)
        return batch, logits[:, -1]

    @classmethod
    def feed(
        cls,
        model: Any,
        sequences: Sequence[Sequence[int]],
        *,
        device: torch.device,
        prefixes: Sequence[PrefixHit | None] | None = None,
        keep: int,
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Feed ``sequences``, each on top of its cached prefix; logits ``[rows, keep, vocab]``.

        Args:
            prefixes: per row, cached KV of the sequence's first tokens (``None``: no hit).
                Only the tokens after it are computed. It must leave at least ``keep`` tokens
                of the row to feed: those are the positions whose logits are returned.
            keep: how many last positions' logits to return.
        """
        hits = list(prefixes) if prefixes is not None else [None] * len(sequences)
        reused = [hit.length if hit is not None else 0 for hit in hits]
        input_ids, new_mask, _ = left_pad(
            [sequence[length:] for sequence, length in zip(sequences, reused, strict=True)],
            device=device,
        )
        cache, prefix_mask = seeded_cache(model, hits, device=device)
        attention_mask = torch.cat([prefix_mask, new_mask], dim=-1)
        # Positions count each row's own tokens, cached ones included, across the hole.
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)[:, prefix_mask.shape[1] :]
        logits = forward(model, input_ids, attention_mask, position_ids, cache=cache, keep=keep)
        batch = cls(
            model, cache=cache, attention_mask=attention_mask, lengths=attention_mask.sum(dim=-1)
        )
        return batch, logits

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    def row_keys_values(self, row: int) -> KeysValues:
        """Row ``row``'s keys and values over the tokens it has fed, ``[1, heads, fed, dim]``.

        A lone row without padding hands over its cache tensors as they are (no copy): the
        batch never writes into them, it only replaces them with bigger ones. Otherwise the
        row's unmasked columns are gathered into new tensors.
        """
        if self.rows == 1 and bool(self.attention_mask.all()):
            return tuple((layer.keys, layer.values) for layer in self.cache.layers)
        columns = self.attention_mask[row].nonzero().squeeze(-1)
        gathered = []
        for layer in self.cache.layers:
            index = columns.to(layer.keys.device)
            gathered.append(
                (
                    layer.keys[row : row + 1].index_select(-2, index),
                    layer.values[row : row + 1].index_select(-2, index),
                )
            )
        return tuple(gathered)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[rows]``); return the next-token logits (``[rows, vocab]``)."""
        tokens = tokens.to(self.attention_mask.device)
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones((self.rows, 1))], dim=-1
        )
        position_ids = self.lengths[:, None]
        logits = forward(
            self.model, tokens[:, None], self.attention_mask, position_ids, cache=self.cache, keep=1
        )
        self.lengths = self.lengths + 1
        return logits[:, -1]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows, in this order."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.attention_mask.device)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.lengths = self.lengths[index]


def seeded_cache(
    model: Any, prefixes: Sequence[PrefixHit | None], *, device: torch.device
) -> tuple[DynamicCache, torch.Tensor]:
    """A cache holding each row's cached prefix, left-padded; and its mask, ``[rows, width]``.

    Padded columns hold zeros (masked, so never attended to). The prefixes are copied into the
    batch's own tensors, except a lone row's, which the cache takes as views: its first update
    concatenates them into a new tensor, so the stored entry is never written to.
    """
    lengths = [hit.length if hit is not None else 0 for hit in prefixes]
    width = max(lengths, default=0)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    cache = DynamicCache(config=model.config)
    if width == 0:
        return cache, mask.to(device)
    for index, layer in enumerate(cache.layers):
        parts = [None if hit is None else hit.layer(index) for hit in prefixes]
        if len(parts) == 1:
            [(keys, values)] = parts  # a lone row's prefix fills the width: no padding
        else:
            keys = _left_padded([None if part is None else part[0] for part in parts], width)
            values = _left_padded([None if part is None else part[1] for part in parts], width)
        # DynamicLayer's own state, set as its first update would, without that update's copy.
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache, mask.to(device)


def _left_padded(parts: Sequence[torch.Tensor | None], width: int) -> torch.Tensor:
    """``[rows, heads, width, dim]``: each row's ``[1, heads, n, dim]`` part at its end."""
    like = next(part for part in parts if part is not None)
    batch = like.new_zeros((len(parts), like.shape[1], width, like.shape[3]))
    for row, part in enumerate(parts):
        if part is not None:
            batch[row, :, width - part.shape[-2] :] = part[0]
    return batch


def forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    cache: DynamicCache | None,
    keep: int,
) -> torch.Tensor:
    """One forward pass; the logits of the last ``keep`` positions, ``[rows, keep, vocab]``.

    ``logits_to_keep`` spares the vocabulary projection of every other position, which for a
    long prompt is most of the work; models that lack it get sliced afterwards.
    """
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "past_key_values": cache,
        "use_cache": cache is not None,
    }
    if _accepts_logits_to_keep(type(model)):
        kwargs["logits_to_keep"] = keep
    return model(**kwargs).logits[:, -keep:]


@functools.cache
def _accepts_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


# --- the engine -----------------------------------------------------------------------------------


class Engine:
    """Generation and scoring for one loaded model.

    Not thread-safe: one thread runs it, the :class:`~.scheduler.BatchScheduler`'s, which batches
    the work of concurrent predictions.
    """

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int,
        context_length: int | None,
        eos_token_ids: Sequence[int],
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        """
        Args:
            prefix_cache: where fed sequences' KV is kept for later prompts that share a
                prefix; ``None`` computes every prompt in full.
        """
        self.model = model
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.eos_token_ids = frozenset(eos_token_ids)
        self.input_device = model.get_input_embeddings().weight.device
        self.prefix_cache = prefix_cache

    @classmethod
    def start(
        cls,
        model: Any,
        *,
        context_length: int | None,
        eos_token_ids: Sequence[int],
        prefix_cache_mb: int | None = None,
        prefix_cache_gpu_share: float | None = None,
    ) -> Engine:
        """Run a one-token warm-up forward and return an engine sized by its logits.

        The vocabulary size is what the logits say, not config.json: some checkpoints pad the
        embedding matrix beyond the tokenizer, and those ids are valid model outputs. The
        warm-up also shows whether the model's KV cache can be reused across prompts.

        Args:
            prefix_cache_mb: the prefix cache's budget in MiB (``serve.prefix_cache_mb``);
                ``0`` disables reuse, ``None`` takes a share of free GPU memory or 1 GiB.
            prefix_cache_gpu_share: that share (``serve.prefix_cache_gpu_share``), on CUDA.
        """
        device = model.get_input_embeddings().weight.device
        with torch.inference_mode():
            probe = torch.zeros((1, 1), dtype=torch.long, device=device)
            cache = DynamicCache(config=model.config)
            logits = forward(model, probe, torch.ones_like(probe), probe, cache=cache, keep=1)
        budget = budget_bytes(
            device=device, size_mb=prefix_cache_mb, gpu_share=prefix_cache_gpu_share
        )
        prefix_cache = None
        if budget <= 0:
            log.info("prefix cache: off (its budget is 0)")
        elif not _reusable(model, cache):
            log.info("prefix cache: off (%s has no croppable KV cache)", type(model).__name__)
        else:
            prefix_cache = PrefixCache(budget_bytes=budget)
            log.info("prefix cache: up to %.0f MiB of KV kept across predictions", budget / MIB)
        return cls(
            model,
            vocab_size=logits.shape[-1],
            context_length=context_length,
            eos_token_ids=eos_token_ids,
            prefix_cache=prefix_cache,
        )

    @property
    def reused_prompt_tokens(self) -> int:
        """Prompt tokens taken from the prefix cache instead of computed, so far."""
        return 0 if self.prefix_cache is None else self.prefix_cache.reused_tokens

    @property
    def resumes_cheaply(self) -> bool:
        """Whether a stream stopped between steps resumes from its cached KV (one token fed)
        rather than by feeding its whole sequence again: only with a prefix cache."""
        return self.prefix_cache is not None

    def forget_prefixes(self) -> None:
        """Empty the prefix cache, e.g. to free memory for a batch that ran out of it."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # GENERATE

    def generate(
        self, streams: Sequence[GenerationStream]
    ) -> Iterator[list[TokenEvent | StreamFailed]]:
        """Decode ``streams`` together, yielding every step's events as soon as they are known.

        Each stream's state is updated before its event is yielded, so if a later step raises,
        the caller can resume the unfinished streams from exactly where they stopped. A stream
        that finishes leaves what it fed in the prefix cache, before its last event is yielded.

        Closing the iterator between two steps (the scheduler does, to let newly arrived work
        join the batch) leaves what every unfinished stream fed in the prefix cache too, so
        resuming it feeds one token instead of its whole sequence.
        """
        active = [stream for stream in streams if stream.wants_tokens]
        if not active:
            return
        with torch.inference_mode():
            sequences = [s.sequence for s in active]
            batch, logits, reused = self._feed(sequences, keep=[1] * len(active))
            for stream, sequence, hit in zip(active, sequences, reused, strict=True):
                stream.fed.add(fed=len(sequence), reused=hit)
            logits = logits[:, -1]
            for stream in active:
                if stream.generator is None and not stream.request.sampling.greedy:
                    stream.generator = make_generator(stream.request.sampling.seed, logits.device)
            sampler = BatchSampler(
                [s.request for s in active],
                [s.generated for s in active],
                [s.generator for s in active],
                vocab_size=self.vocab_size,
                device=logits.device,
            )
        while True:
            with torch.inference_mode():
                choice = sampler.choose(logits)
            events = [self._advance(stream, choice, row) for row, stream in enumerate(active)]
            with torch.inference_mode():
                for row, event in enumerate(events):
                    if isinstance(event, TokenEvent) and event.stream.finished:
                        # The last token was chosen, never fed: the cache holds all but it.
                        self._remember(event.stream.sequence[:-1], batch, row)
            try:
                yield events
            except GeneratorExit:
                self._remember_unfinished(active, batch)
                raise
            going = [row for row, stream in enumerate(active) if not stream.finished]
            if not going:
                return
            with torch.inference_mode():
                tokens = choice.tokens
                if len(going) < len(active):
                    batch.keep(going)
                    sampler.keep(going)
                    tokens = tokens[torch.tensor(going, device=tokens.device)]
                sampler.observe(tokens)
                logits = batch.step(tokens)
            active = [active[row] for row in going]

    def _remember_unfinished(self, active: Sequence[GenerationStream], batch: DecodeBatch) -> None:
        """Keep the KV of the rows that stop before their stream finished (see :meth:`generate`).

        Row ``i`` of ``batch`` is ``active[i]``, which has fed all its tokens but the last one
        chosen."""
        with torch.inference_mode():
            for row, stream in enumerate(active):
                if not stream.finished:
                    self._remember(stream.sequence[:-1], batch, row)

    def _advance(
        self, stream: GenerationStream, choice: Choice, row: int
    ) -> TokenEvent | StreamFailed:
        token, logprob = choice.token_ids[row], choice.logprobs[row]
        if math.isnan(logprob):  # the model's logits were NaN: there is no sensible token
            stream.finished = True
            return StreamFailed(stream, NAN_MESSAGE)
        stream.generated.append(token)
        reason = self._finish_reason(stream, token)
        stream.finished = reason is not None
        return TokenEvent(stream, token, logprob, choice.top_logprobs[row], reason)

    def _finish_reason(self, stream: GenerationStream, token: int) -> FinishReason:
        if token in self.eos_token_ids:
            return "stop"
        if len(stream.generated) >= stream.request.max_tokens:
            return "length"
        # The window is full once prompt + generated fill it: the next token would not fit.
        length = len(stream.request.prompt) + len(stream.generated)
        if self.context_length is not None and length >= self.context_length:
            return "length"
        return None

    # SCORE

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score all ``requests`` in one forward pass: ``log_softmax(logits)[scored[j]]`` for every j.

        Row ``i`` feeds ``prompt + scored[:-1]``; left-padded, its scored tokens are predicted
        by the last ``len(scored)`` positions of every row alike. What a row feeds goes to the
        prefix cache: ``distribution`` scores several continuations of one prompt.
        """
        results = [ScoreResult(request) for request in requests]  # empty `scored`: no tokens
        todo = [index for index, request in enumerate(requests) if request.scored]
        if not todo:
            return results
        with torch.inference_mode():
            sequences = [(*requests[i].prompt, *requests[i].scored[:-1]) for i in todo]
            batch, logits, reused = self._feed(
                sequences, keep=[len(requests[index].scored) for index in todo]
            )
            keep = logits.shape[1]
            for row, index in enumerate(todo):
                request = requests[index]
                results[index] = self._score_row(request, logits[row, keep - len(request.scored) :])
                results[index].fed.add(fed=len(sequences[row]), reused=reused[row])
                if results[index].error is None:
                    self._remember(sequences[row], batch, row)
        return results

    @staticmethod
    def _score_row(request: ScoreRequest, logits: torch.Tensor) -> ScoreResult:
        scored = torch.tensor(request.scored, dtype=torch.long, device=logits.device)
        dist = torch.log_softmax(logits.float(), dim=-1)
        values = dist.gather(-1, scored[:, None]).squeeze(-1).clamp(min=LOGPROB_FLOOR).tolist()
        if any(math.isnan(value) for value in values):
            return ScoreResult(request, error=NAN_MESSAGE)
        return ScoreResult(request, logprobs=tuple(values))

    # the prefix cache

    def _feed(
        self, sequences: Sequence[Sequence[int]], *, keep: Sequence[int]
    ) -> tuple[DecodeBatch, torch.Tensor, list[int]]:
        """Feed ``sequences`` on top of their longest cached prefixes: the batch, the logits of
        the last ``max(keep)`` positions, and how many tokens of each row came from the cache.
        Row ``i``'s last ``keep[i]`` tokens are always computed."""
        self._share_prefixes(sequences, keep=keep)
        prefixes = [
            None
            if self.prefix_cache is None
            else self.prefix_cache.longest_prefix(sequence, limit=len(sequence) - need)
            for sequence, need in zip(sequences, keep, strict=True)
        ]
        batch, logits = DecodeBatch.feed(
            self.model, sequences, device=self.input_device, prefixes=prefixes, keep=max(keep)
        )
        return batch, logits, [0 if hit is None else hit.length for hit in prefixes]

    def _share_prefixes(self, sequences: Sequence[Sequence[int]], *, keep: Sequence[int]) -> None:
        """Compute once, and cache, each long prefix that several rows share.

        Without this, rows of one batch each compute their shared prompt: the cache only helps
        across batches. With it, :meth:`_feed` finds a cache hit for every such row and feeds
        only its own suffix. Each prefix costs a forward pass of its own, so only prefixes with
        at least :data:`MIN_SHARED_PREFIX` tokens the cache does not already hold qualify.
        Results do not change: a row on a cached prefix computes what it computes alone.
        """
        if self.prefix_cache is None or len(sequences) < 2:
            return
        limits = [len(sequence) - need for sequence, need in zip(sequences, keep, strict=True)]
        for prefix in shared_prefixes(sequences, limits=limits, minimum=MIN_SHARED_PREFIX):
            if len(prefix) - self.prefix_cache.cached_length(prefix) < MIN_SHARED_PREFIX:
                continue
            hit = self.prefix_cache.longest_prefix(prefix, limit=len(prefix) - 1)
            batch, _ = DecodeBatch.feed(
                self.model, [prefix], device=self.input_device, prefixes=[hit], keep=1
            )
            self._remember(prefix, batch, 0)

    def _remember(self, tokens: Sequence[int], batch: DecodeBatch, row: int) -> None:
        """Keep row ``row``'s KV (it fed exactly ``tokens``) for later prompts."""
        if self.prefix_cache is not None and not self.prefix_cache.holds(tokens):
            self.prefix_cache.add(tokens, batch.row_keys_values(row))


def _reusable(model: Any, probe: DynamicCache) -> bool:
    """Whether ``probe`` (after a forward) can be reused, and a fresh cache has its layers up
    front, so :func:`seeded_cache` can fill them."""
    fresh = DynamicCache(config=model.config)
    return supports_prefix_reuse(probe) and len(fresh.layers) == len(probe.layers)
