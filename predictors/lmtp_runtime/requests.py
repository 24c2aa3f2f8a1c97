"""What the engine is asked to compute, apart from any wire format.

Two front ends speak to the engine: LMTP ops (:mod:`.protocol`, for LMQL) and text predictions
(:mod:`.text_request`, for Replicate's LLM clients). Each checks its own inputs and maps them
into these requests; the engine, the sampler and the scheduler know only these, never a stream
id or a Cog input (vLLM keeps its engine requests and ``SamplingParams`` apart from its API
protocols the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SEED = 2**64 - 1
# Bounds on sampling values that keep float32 arithmetic finite. Beyond them a value bans (or
# forces) every token it touches anyway, so nothing is lost; within them no client value can
# turn the logits into NaN (which would otherwise be blamed on the model). Both front ends
# check their inputs against them.
MAX_PENALTY = 1000.0
"""Largest |presence_penalty|, |frequency_penalty| and repetition_penalty."""
MAX_LOGIT_BIAS = 1e20
"""Largest positive bias in ``logit_bias`` (LMQL's masks use +-100). Negative ones may be any
size: they only push a token's logprob to the floor."""
MIN_TEMPERATURE = 1e-6
"""Smallest temperature above 0 (greedy): logits divided by less overflow float32."""
MAX_TEMPERATURE = 1e6


def temperature_problem(temperature: float) -> str | None:
    """What is wrong with a temperature already in [0, MAX_TEMPERATURE], said after its name
    (each front end names it its own way); ``None``: nothing."""
    if 0.0 < temperature < MIN_TEMPERATURE:
        return f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {temperature:g}"
    return None


@dataclass(frozen=True)
class SamplingParams:
    """How a generation picks tokens. The defaults change nothing: greedy, unpenalised."""

    temperature: float = 0.0
    top_k: int = 0
    """``0`` keeps every token."""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """Generate up to ``max_tokens`` tokens after ``prompt``."""

    prompt: tuple[int, ...]
    max_tokens: int
    top_logprobs: int = 0
    """How many of the likeliest tokens to report with each generated one."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """``(token id, bias)`` pairs added to the logits at every step; a token named twice gets
    both added."""
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class ScoreRequest:
    """The log-probability of each token of ``scored`` after ``prompt`` and the ones before."""

    prompt: tuple[int, ...]
    scored: tuple[int, ...]
