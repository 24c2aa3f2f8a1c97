"""LMQL 0.7.3's real Replicate client against a model built by ./build, served by the Cog runtime.

The client talks to ./serve's Replicate-compatible API (its hard-coded api.replicate.com is
redirected in-process). Answers are compared with plain transformers on the same checkpoint:
greedy decoding for ``argmax``, normalised SCORE log-probabilities for ``distribution``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtp_cog.serve.redirect import redirect_replicate_api
from lmtp_cog.serve.service import Served
from tests.support.served_projects import E2E_MODEL, E2E_OWNER

MAX_TOKENS = 40
"""Long enough that LMQL needs several 16-token GENERATE calls for one variable."""

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def reference(built_project: Path) -> tuple[AutoTokenizer, AutoModelForCausalLM]:
    checkpoint = built_project / "checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture
def lmql_model(built_project: Path, served: Served, monkeypatch: pytest.MonkeyPatch):
    import lmql

    monkeypatch.setenv("REPLICATE_API_TOKEN", "any-token")
    with redirect_replicate_api(served.api_url):
        yield lmql.model(
            f"{E2E_OWNER}/{E2E_MODEL}",
            endpoint=f"replicate:{E2E_OWNER}/{E2E_MODEL}",
            tokenizer=str(built_project / "checkpoints"),
        )


def _prompt_ids(tokenizer, text: str) -> list[int]:
    """What LMQL sends for ``text``: BOS, then the text's tokens."""
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]


@torch.no_grad()
def _greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by full recomputation: independent of any cache or batching."""
    ids = list(ids)
    start = len(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] == eos:
            break
    return ids[start:]


@torch.no_grad()
def _mean_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """LMQL ranks ``distribution`` values by the mean of their tokens' log-probabilities."""
    ids = torch.tensor([prompt + continuation])
    logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    total = sum(float(logprobs[len(prompt) + j - 1, t]) for j, t in enumerate(continuation))
    return total / len(continuation)


def test_argmax_with_stops_at_equals_greedy_decoding_over_several_chunks(
    lmql_model, reference
) -> None:
    import lmql

    tokenizer, model = reference
    prompt = _prompt_ids(tokenizer, "Hello")
    greedy = _greedy(model, prompt, MAX_TOKENS - 1, tokenizer.eos_token_id)
    text = tokenizer.decode([t for t in greedy if t != tokenizer.eos_token_id])
    # A stop phrase that greedy decoding reaches only after the first 16-token chunk.
    stop = tokenizer.decode(greedy[20:22])
    assert stop.strip() and len(greedy) > 22, "the tiny model must produce a long enough answer"
    expected = text[: text.index(stop) + len(stop)]

    result = lmql.run_sync(
        f'argmax "Hello[WHO]" where STOPS_AT(WHO, {stop!r}) and len(TOKENS(WHO)) < {MAX_TOKENS}',
        model=lmql_model,
    )

    assert result.variables["WHO"] == expected
    assert len(tokenizer(expected, add_special_tokens=False).input_ids) > 16


def test_distribution_equals_normalised_score_logprobs(lmql_model, reference) -> None:
    """One SCORE per candidate; LMQL normalises their mean log-probabilities.

    The query generates THOUGHT first: LMQL 0.7.3 skips the distribution step entirely for a
    query whose only variable is the distribution variable (it returns before decoding).
    """
    import lmql

    tokenizer, model = reference
    candidates = [" yes", " no", " maybe"]

    result = lmql.run_sync(
        'argmax "Question: Is the sky blue? Thinking:[THOUGHT] Answer:[ANSWER]" '
        f"where len(TOKENS(THOUGHT)) < 4 distribution ANSWER in {candidates!r}",
        model=lmql_model,
    )

    base = f"Question: Is the sky blue? Thinking:{result.variables['THOUGHT']} Answer:"
    prompt = _prompt_ids(tokenizer, base)
    scores = {
        c: _mean_logprob(model, prompt, tokenizer(c, add_special_tokens=False).input_ids)
        for c in candidates
    }
    total = math.log(sum(math.exp(s) for s in scores.values()))
    expected = {c: math.exp(s - total) for c, s in scores.items()}
    got = {value: float(p) for value, p in result.variables["P(ANSWER)"]}
    assert set(got) == set(candidates)
    for candidate in candidates:
        assert got[candidate] == pytest.approx(expected[candidate], abs=1e-4)
    assert result.variables["ANSWER"] == max(expected, key=expected.get)


def test_parallel_queries_each_get_their_own_greedy_answer(lmql_model, reference) -> None:
    """Three queries at once: LMQL sends their calls as concurrent predictions, which the model
    runs together (config.concurrency, default 8) in shared batches. Each answer must still be
    its own prompt's greedy decoding."""
    import asyncio

    import lmql

    tokenizer, model = reference
    words = ["Hello", "Once upon", "The cat"]
    expected = {}
    for word in words:
        greedy = _greedy(model, _prompt_ids(tokenizer, word), 11, tokenizer.eos_token_id)
        expected[word] = tokenizer.decode([t for t in greedy if t != tokenizer.eos_token_id])

    async def ask(word: str) -> str:
        result = await lmql.run(
            f'argmax "{word}[WHO]" where len(TOKENS(WHO)) < 12', model=lmql_model
        )
        return result.variables["WHO"]

    async def ask_all() -> list[str]:
        return await asyncio.gather(*(ask(word) for word in words))

    answers = asyncio.run(ask_all())
    assert dict(zip(words, answers, strict=True)) == expected
