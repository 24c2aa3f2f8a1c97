"""Per-prediction metrics, recorded through Cog's metrics API.

Replicate's LLM runtimes record token counts and speed on every prediction (``record_metric``);
Cog returns them in the prediction's ``metrics`` (beside its own ``predict_time``), and the model
page and users' dashboards show them. They never go into the output or the logs, which LMQL's
Replicate client parses as protocol lines.

Text mode records what Replicate's LLMs do (:class:`TextMetrics`); LMTP mode what a
token-level client is billed in: prompt tokens computed and reused from the prefix cache,
tokens generated and scored (:class:`LmtpMetrics`). Outside a Cog prediction (tests, the
benchmark) recording is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from .engine import FedTokens


def record(metrics: Mapping[str, int | float]) -> None:
    """Record ``metrics`` on the Cog prediction running in this context (if any)."""
    try:
        from cog import current_scope
    except ImportError:  # the runtime without Cog (a bare Python caller)
        return
    scope = current_scope()
    for name, value in metrics.items():
        scope.record_metric(name, value)


@dataclass
class TextMetrics:
    """One text prediction: what Replicate's LLMs (cog-vllm) report."""

    input_token_count: int = 0
    output_token_count: int = 0
    time_to_first_token: float | None = None
    """Seconds from the request to the first generated token."""
    tokens_per_second: float | None = None
    """Generated tokens ÷ seconds from the request to the last one."""
    started: float = field(default_factory=time.monotonic, repr=False)

    def token(self) -> None:
        """One more generated token, now."""
        self.output_token_count += 1
        elapsed = time.monotonic() - self.started
        if self.time_to_first_token is None:
            self.time_to_first_token = elapsed
        self.tokens_per_second = self.output_token_count / elapsed if elapsed > 0 else None

    def as_metrics(self) -> dict[str, int | float]:
        values = asdict(self)
        values.pop("started")
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class LmtpMetrics:
    """One LMTP prediction, summed over its ops."""

    input_token_count: int = 0
    """Prompt tokens of its GENERATE and SCORE ops (what the ops sent)."""
    prompt_tokens_computed: int = 0
    """Of those, the tokens a forward pass computed."""
    prefix_cache_tokens: int = 0
    """Of those, the tokens taken from the prefix cache instead."""
    prefix_cache_hits: int = 0
    """Ops that found at least one token of their prompt in the prefix cache."""
    output_token_count: int = 0
    """Tokens generated (GENERATE)."""
    scored_token_count: int = 0
    """Tokens scored (SCORE)."""

    def fed(self, fed: FedTokens) -> None:
        self.prompt_tokens_computed += fed.computed
        self.prefix_cache_tokens += fed.reused
        self.prefix_cache_hits += fed.reused > 0

    def as_metrics(self) -> dict[str, int]:
        return asdict(self)
