"""The floors: the least work a server could do per LMTP op, as bare ``model(...)`` loops.

Two floors bound what any LMTP server can reach on a workload:

- ``floor-recompute`` runs each op from scratch: one forward pass over the whole prompt, then a
  KV-cached decode loop. It is what a server without a cross-request cache must at least do.
- ``floor-prefix`` keeps the KV cache of the last sequence it computed and, for the next op,
  computes only the tokens after the longest common prefix: an ideal prefix cache, with none of
  the bookkeeping a real one needs. On LMQL's traces (each call re-sends the whole growing
  prompt) it feeds one token per call before decoding.

Both run one op at a time at batch size 1, with one exception: ``floor-prefix`` decodes the
GENERATE ops of one prediction that share a prompt (``sample(n=k)``) as one batch over a single
prefill, since that prompt is computed once and each step's k new tokens in one forward pass.
They skip everything the protocol does not need (no ``top_logprobs`` beyond the chosen token,
logits only where a token is read), so they measure model compute plus the unavoidable per-step
Python. They speak just enough LMTP for the harness: GENERATE (greedy or seeded sampling, with
``logit_bias``) and SCORE, answered with the same ``TOKEN`` lines as the real backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from streams import token_line

FloorKind = Literal["floor-recompute", "floor-prefix"]


def load_bare_model(checkpoint_dir: Path) -> Any:
    """``from_pretrained`` in float32 on the CPU, in eval mode: the floors' whole setup."""
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=torch.float32)
    return model.eval()


class FloorBackend:
    """A bare greedy/sampling loop that answers LMTP ops one at a time."""

    concurrency = 1
    """A bare loop serves one prediction at a time."""

    def __init__(self, model: Any, *, kind: FloorKind) -> None:
        self.name = kind
        self._model = model
        self._reuse_prefix = kind == "floor-prefix"
        self._cache: Any = None
        self._cached_ids: list[int] = []
        eos = model.config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._vocab_size = model.config.vocab_size

    def close(self) -> None:
        self._cache = None

    def predict(self, ops: Sequence[Sequence[Any]]) -> Iterator[str]:
        with torch.inference_mode():
            if self._reuse_prefix and _share_one_prompt(ops):
                yield from self._generate_together([args for _, args in ops])
                return
            for command, args in ops:
                if not self._reuse_prefix:
                    self._cache, self._cached_ids = None, []
                if command == "GENERATE":
                    yield from self._generate(args)
                elif command == "SCORE":
                    yield self._score(args)
                else:
                    raise ValueError(f"the floors do not implement {command}")

    # --- GENERATE -------------------------------------------------------------------------------

    def _generate(self, args: dict[str, Any]) -> Iterator[str]:
        prompt: list[int] = list(args["prompt"])
        max_tokens = int(args.get("max_tokens", 32))
        temperature = float(args.get("temperature", 0.0))
        bias = self._bias_vector(args.get("logit_bias") or {})
        generator = _seeded_generator(args.get("seed"))
        stream_id = args.get("stream_id")

        logits = self._forward_new_tokens(prompt, logits_to_keep=1)[-1]
        for step in range(max_tokens):
            biased = logits.float() + bias
            distribution = torch.log_softmax(biased, dim=-1)
            token = _choose(biased, temperature=temperature, generator=generator)
            last = step == max_tokens - 1 or token in self._eos_ids
            finish_reason = ("stop" if token in self._eos_ids else "length") if last else None
            yield token_line(
                stream_id=stream_id,
                token=token,
                logprob=float(distribution[token]),
                finish_reason=finish_reason,
            )
            if last:
                return
            logits = self._decode_step(token)

    def _generate_together(self, ops_args: list[dict[str, Any]]) -> Iterator[str]:
        """Several GENERATEs of one prompt: one prefill, then every row decoded in one batch.

        The batch leaves a multi-row cache behind, so the floor forgets it afterwards.
        """
        rows = len(ops_args)
        max_tokens = [int(args.get("max_tokens", 32)) for args in ops_args]
        temperatures = [float(args.get("temperature", 0.0)) for args in ops_args]
        biases = torch.stack([self._bias_vector(args.get("logit_bias") or {}) for args in ops_args])
        generators = [_seeded_generator(args.get("seed")) for args in ops_args]
        open_rows = set(range(rows))

        logits = self._forward_new_tokens(list(ops_args[0]["prompt"]), logits_to_keep=1)[-1:].expand(rows, -1)
        self._cache.batch_repeat_interleave(rows)
        for step in range(max(max_tokens)):
            biased = logits.float() + biases
            distributions = torch.log_softmax(biased, dim=-1)
            tokens = [
                _choose(biased[row], temperature=temperatures[row], generator=generators[row]) for row in range(rows)
            ]
            lines = []
            for row in sorted(open_rows):
                token = tokens[row]
                last = step == max_tokens[row] - 1 or token in self._eos_ids
                finish_reason = ("stop" if token in self._eos_ids else "length") if last else None
                lines.append(
                    token_line(
                        stream_id=ops_args[row].get("stream_id"),
                        token=token,
                        logprob=float(distributions[row, token]),
                        finish_reason=finish_reason,
                    )
                )
                if last:
                    open_rows.discard(row)
            yield "".join(lines)
            if not open_rows:
                break
            # Finished rows keep decoding with the rest: cheaper than shrinking the cache.
            output = self._model(input_ids=torch.tensor(tokens)[:, None], past_key_values=self._cache, use_cache=True)
            logits = output.logits[:, -1]
        self._cache, self._cached_ids = None, []

    # --- SCORE ----------------------------------------------------------------------------------

    def _score(self, args: dict[str, Any]) -> str:
        prompt: list[int] = list(args["prompt"])
        scored: list[int] = list(args["scored"])
        logits = self._forward_new_tokens([*prompt, *scored], logits_to_keep=len(scored) + 1)
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        lines = [
            token_line(
                stream_id=args.get("stream_id"),
                token=token,
                logprob=float(logprobs[j, token]),
                finish_reason="stop" if j == len(scored) - 1 else None,
            )
            for j, token in enumerate(scored)
        ]
        return "".join(lines)

    # --- the model ------------------------------------------------------------------------------

    def _forward_new_tokens(self, sequence: list[int], *, logits_to_keep: int) -> torch.Tensor:
        """Logits for the last ``logits_to_keep`` positions of ``sequence``, shape ``[k, vocab]``.

        Only the tokens after the cached prefix are fed; the recompute floor empties its cache
        before every op, so for it that is the whole sequence.
        """
        reused = self._reusable_prefix(sequence, keep_fed=logits_to_keep)
        if reused == 0:
            self._cache = DynamicCache()
        elif reused < self._cache.get_seq_length():
            self._cache.crop(reused - self._cache.get_seq_length())  # negative: tokens to drop
        output = self._model(
            input_ids=torch.tensor([sequence[reused:]]),
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        self._cached_ids = list(sequence)
        return output.logits[0]

    def _decode_step(self, token: int) -> torch.Tensor:
        """Feed one generated token on top of the cache; the next position's logits."""
        output = self._model(input_ids=torch.tensor([[token]]), past_key_values=self._cache, use_cache=True)
        self._cached_ids.append(token)
        return output.logits[0, -1]

    def _reusable_prefix(self, sequence: list[int], *, keep_fed: int) -> int:
        """How many leading tokens of ``sequence`` the cache holds; ``keep_fed`` are fed again.

        The last ``keep_fed`` tokens are always fed, even when cached: their logits are needed.
        """
        if self._cache is None:
            return 0
        common = 0
        for cached, new in zip(self._cached_ids, sequence):
            if cached != new:
                break
            common += 1
        return max(0, min(common, len(sequence) - keep_fed))

    def _bias_vector(self, logit_bias: dict[Any, float]) -> torch.Tensor:
        bias = torch.zeros(self._vocab_size)
        if logit_bias:
            ids = torch.tensor([int(k) for k in logit_bias])
            bias[ids] = torch.tensor([float(v) for v in logit_bias.values()])
        return bias


def _share_one_prompt(ops: Sequence[Sequence[Any]]) -> bool:
    return (
        len(ops) > 1
        and all(command == "GENERATE" for command, _ in ops)
        and all(args["prompt"] == ops[0][1]["prompt"] for _, args in ops)
    )


def _seeded_generator(seed: Any) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def _choose(biased_logits: torch.Tensor, *, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0.0:
        return int(biased_logits.argmax())
    probabilities = torch.softmax(biased_logits / temperature, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))
