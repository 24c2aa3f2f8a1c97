"""From a batch's next-token logits to chosen tokens and reported log-probabilities (LMTP.md §2).

For every row (one GENERATE stream), in float32:

    adjusted = penalise(logits) + logit_bias      repetition (HF-style), presence/frequency (OpenAI)
    dist     = log_softmax(adjusted)              reported: logprob = dist[token], top_logprobs
    greedy   → argmax(adjusted)
    sampling → a draw from softmax(top_k/top_p(adjusted / T)), with the stream's own generator

``dist`` does not depend on the temperature or on top_k/top_p: those shape what is *drawn*, not
what is *reported*. All full-vocabulary work stays on the logits' device; each step moves only
the chosen ids, their logprobs and the top-n lists to the host, in one transfer, and nothing
else waits for the device (which filters apply is read from the requests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .requests import GenerationRequest

LOGPROB_FLOOR = float(torch.finfo(torch.float32).min)
"""Reported instead of ``-inf`` (a token the model rules out): strict JSON has no infinity."""


@dataclass(frozen=True)
class Choice:
    """One decoding step of a batch: what each row picked, and what to report about it."""

    tokens: torch.Tensor
    """``[rows]`` chosen ids on the logits' device, to feed back to the model."""
    token_ids: list[int]
    logprobs: list[float]
    """``dist[token]`` per row, floored at :data:`LOGPROB_FLOOR`; NaN if the model produced NaN."""
    top_logprobs: list[dict[int, float]]
    """Per row: the chosen token, then that row's own top-n of ``dist``."""


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A stream's own random source: reproducible with a seed, fresh entropy without one."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class BatchSampler:
    """The per-row decoding state of one decode batch: bias, penalty counts, settings, generators.

    Rows line up with the decode batch's rows; :meth:`keep` drops finished rows from both.
    """

    def __init__(
        self,
        requests: Sequence[GenerationRequest],
        histories: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None],
        *,
        vocab_size: int,
        device: torch.device,
    ) -> None:
        """
        Args:
            requests: one generation request per row.
            histories: the tokens each row has generated so far (non-empty when a stream resumes
                after a batch failure); they seed the penalty counts.
            generators: each sampling row's generator, ``None`` for greedy rows.
        """
        self._requests = list(requests)
        self._generators = list(generators)
        self._vocab_size = vocab_size
        self._device = device
        settings = [op.sampling for op in self._requests]

        self._bias = bias_matrix(
            [op.logit_bias for op in self._requests], vocab_size=vocab_size, device=device
        )
        self._temperature = self._column([s.temperature for s in settings])
        # A top_k of the vocabulary or more keeps every token, as 0 does (and 2**63 fits no long).
        self._top_k = torch.tensor(
            [min(s.top_k, vocab_size) for s in settings], dtype=torch.long, device=device
        )
        self._top_p = self._column([s.top_p for s in settings])
        self._sampled_rows, self._sampled_index = self._sampled()

        self._counts = self._presence = self._frequency = None
        if any(s.presence_penalty or s.frequency_penalty for s in settings):
            self._presence = self._column([s.presence_penalty for s in settings])
            self._frequency = self._column([s.frequency_penalty for s in settings])
            self._counts = token_counts(histories, vocab_size=vocab_size, device=device)

        self._seen = self._repetition = None
        if any(s.repetition_penalty != 1.0 for s in settings):
            # transformers' repetition penalty covers the prompt too, not only generated tokens.
            self._repetition = self._column([s.repetition_penalty for s in settings])
            sequences = [[*op.prompt, *history] for op, history in zip(requests, histories, strict=True)]
            self._seen = token_counts(sequences, vocab_size=vocab_size, device=device) > 0

    def choose(self, logits: torch.Tensor) -> Choice:
        """Pick one token per row from ``logits`` (``[rows, vocab]``, any float dtype)."""
        adjusted = self._adjust(logits.float())
        dist = torch.log_softmax(adjusted, dim=-1)
        tokens = adjusted.argmax(dim=-1)
        if self._sampled_rows:
            tokens = self._sample(adjusted, tokens)
        token_ids, logprobs, top_ids, top_values = self._to_host(dist, tokens)
        top_logprobs = []
        for row, op in enumerate(self._requests):
            entries = {token_ids[row]: logprobs[row]}
            n = op.top_logprobs
            entries.update(zip(top_ids[row][:n], top_values[row][:n], strict=True))
            top_logprobs.append(entries)
        return Choice(
            tokens=tokens, token_ids=token_ids, logprobs=logprobs, top_logprobs=top_logprobs
        )

    def _to_host(
        self, dist: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[list[int], list[float], list[list[int]], list[list[float]]]:
        """The chosen ids, their logprobs and the widest top-n ids and logprobs, on the host.

        One ``[rows, 2 + 2n]`` float64 tensor and one ``.tolist()``: on a GPU every transfer
        waits for the device, and a decode step is short enough for four waits to show.
        float64 holds every token id and every float32 logprob exactly, so nothing changes.
        """
        widest = max(op.top_logprobs for op in self._requests)
        chosen = dist.gather(-1, tokens[:, None])
        columns = [tokens[:, None].double(), chosen.clamp(min=LOGPROB_FLOOR).double()]
        if widest:
            top = torch.topk(dist, widest, dim=-1)
            columns += [top.indices.double(), top.values.clamp(min=LOGPROB_FLOOR).double()]
        host = torch.cat(columns, dim=-1).tolist()
        token_ids = [int(row[0]) for row in host]
        logprobs = [row[1] for row in host]
        top_ids = [[int(token) for token in row[2 : 2 + widest]] for row in host]
        top_values = [row[2 + widest :] for row in host]
        return token_ids, logprobs, top_ids, top_values

    def observe(self, tokens: torch.Tensor) -> None:
        """Count the tokens just chosen (``[rows]``, after :meth:`keep`) for the penalties."""
        rows = torch.arange(len(self._requests), device=self._device)
        if self._counts is not None:
            self._counts.index_put_(
                (rows, tokens), torch.ones_like(tokens, dtype=self._counts.dtype), accumulate=True
            )
        if self._seen is not None:
            self._seen[rows, tokens] = True

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows, in this order (the others' streams finished)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self._device)
        self._requests = [self._requests[row] for row in rows]
        self._generators = [self._generators[row] for row in rows]
        self._temperature = self._temperature[index]
        self._top_k = self._top_k[index]
        self._top_p = self._top_p[index]
        self._sampled_rows, self._sampled_index = self._sampled()
        if self._bias is not None:
            self._bias = self._bias[index]
        if self._counts is not None:
            self._counts = self._counts[index]
            self._presence = self._presence[index]
            self._frequency = self._frequency[index]
        if self._seen is not None:
            self._seen = self._seen[index]
            self._repetition = self._repetition[index]

    def _adjust(self, logits: torch.Tensor) -> torch.Tensor:
        if self._seen is not None:
            logits = apply_repetition_penalty(logits, self._seen, self._repetition)
        if self._counts is not None:
            logits = apply_presence_frequency(logits, self._counts, self._presence, self._frequency)
        if self._bias is not None:
            logits = logits + self._bias
        return logits

    def _sampled(self) -> tuple[list[int], torch.Tensor]:
        """The rows that sample rather than take the argmax, as a list and as an index tensor
        (made once per batch shape, not at every step)."""
        rows = [row for row, op in enumerate(self._requests) if not op.sampling.greedy]
        return rows, torch.tensor(rows, dtype=torch.long, device=self._device)

    def _sample(self, adjusted: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
        rows, index = self._sampled_rows, self._sampled_index
        settings = [self._requests[row].sampling for row in rows]
        scores = adjusted[index] / self._temperature[index, None]
        # Whether a filter applies is read from the requests, on the host: a check on the device
        # (``bool(tensor.any())``) would wait for it at every step.
        widest_k = min(max(s.top_k for s in settings), self._vocab_size)
        if widest_k > 0:
            scores = filter_top_k(scores, self._top_k[index], widest=widest_k)
        if any(s.top_p < 1.0 for s in settings):
            scores = filter_top_p(scores, self._top_p[index])
        probs = torch.softmax(scores, dim=-1)
        # One draw per row, each from its stream's own generator, so a seeded stream samples the
        # same tokens whichever batch it shares.
        draws = [
            torch.multinomial(probs[i], 1, generator=self._generators[row])
            for i, row in enumerate(rows)
        ]
        tokens = greedy.clone()
        tokens[index] = torch.cat(draws)
        return tokens

    def _column(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self._device)


def bias_matrix(
    biases: Sequence[Sequence[tuple[int, float]]], *, vocab_size: int, device: torch.device
) -> torch.Tensor | None:
    """``[rows, vocab]`` additive biases, built on ``device``; ``None`` when no row has any."""
    rows = [row for row, pairs in enumerate(biases) for _ in pairs]
    if not rows:
        return None
    tokens = [token for pairs in biases for token, _ in pairs]
    values = [value for pairs in biases for _, value in pairs]
    matrix = torch.zeros(len(biases), vocab_size, device=device)
    matrix.index_put_(
        (torch.tensor(rows, device=device), torch.tensor(tokens, device=device)),
        torch.tensor(values, dtype=torch.float32, device=device),
        accumulate=True,
    )
    return matrix


def token_counts(
    sequences: Sequence[Sequence[int]], *, vocab_size: int, device: torch.device
) -> torch.Tensor:
    """``[rows, vocab]``: how often each token occurs in each row's sequence (float32)."""
    rows = [row for row, sequence in enumerate(sequences) for _ in sequence]
    tokens = [token for sequence in sequences for token in sequence]
    counts = torch.zeros(len(sequences), vocab_size, device=device)
    if tokens:
        counts.index_put_(
            (torch.tensor(rows, device=device), torch.tensor(tokens, device=device)),
            torch.ones(len(tokens), device=device),
            accumulate=True,
        )
    return counts


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """transformers' rule for tokens already in the sequence: positive logits / p, negative * p."""
    factor = torch.where(logits > 0, 1.0 / penalty[:, None], penalty[:, None])
    return torch.where(seen, logits * factor, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI's rule: subtract ``presence · [count > 0] + frequency · count`` per token."""
    return logits - presence[:, None] * (counts > 0) - frequency[:, None] * counts


def filter_top_k(
    scores: torch.Tensor, top_k: torch.Tensor, *, widest: int | None = None
) -> torch.Tensor:
    """Keep each row's ``top_k`` highest scores (ties at the cut stay); ``0`` keeps every token.

    Args:
        widest: ``max(top_k)`` when the caller knows it from the requests; reading it from the
            tensor instead waits for the device.
    """
    if widest is None:
        widest = int(top_k.max())
    if widest <= 0:
        return scores
    widest = min(widest, scores.shape[-1])
    active = top_k > 0
    best = torch.topk(scores, widest, dim=-1).values
    cut = (top_k.clamp(min=1, max=widest) - 1)[:, None]
    threshold = torch.where(active[:, None], best.gather(-1, cut), -math.inf)
    return scores.masked_fill(scores < threshold, -math.inf)


def filter_top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep each row's smallest set of best tokens whose probability reaches ``top_p`` (nucleus).

    The best token always stays. Rows with ``top_p >= 1`` are left exactly alone (a cumulative
    sum that rounds past 1.0 must not clip their tail). Callers skip the sort when no row has
    ``top_p < 1``; they know that from the requests without asking the device.
    """
    limit = torch.where(top_p < 1.0, top_p, math.inf)[:, None]
    ordered, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= limit)
    return scores.masked_fill(drop, -math.inf)
