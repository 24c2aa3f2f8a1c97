"""OpenAI's API mapped onto LMTP: requests become ops, the model's TOKEN lines become text.

A request (:mod:`.openai_requests`) is tokenized here, with the model's own tokenizer
(:mod:`.tokenizer`): a completion's ``prompt`` as text mode tokenizes a prompt it formats as is
(:func:`lmtp_runtime.prompt_format.format_prompt` with the template ``{prompt}``: the tokenizer's
special tokens added), a chat's ``messages`` through the tokenizer's chat template with the
generation prompt, tokenized without special tokens (the template writes them), as text mode
does too. It becomes one prediction of LMTP ops (:func:`lmtp_ops`): a ``GENERATE`` of the prompt
ids with the request's sampling, and, for ``echo`` with ``logprobs``, a ``SCORE`` of the prompt's
tokens after its first one (whose logprob is ``null``, as OpenAI's is).

What the model answers is turned back into OpenAI's terms by :class:`TokenDecoder`: the text,
detokenized as it streams (:class:`lmtp_runtime.detokenize.IncrementalDetokenizer`, so a
character split over tokens is never cut), cut before the first ``stop`` sequence
(:class:`lmtp_runtime.detokenize.StopSequenceFilter`, which never lets a stop sequence or a prefix
of one out), the per-token logprobs, and the finish reason: ``"stop"`` for an end-of-sequence
token (not part of the text) or a stop sequence, ``"length"`` for the token limit or a full
context window. Usage counts the prompt's tokens and every token generated (an end-of-sequence
token included, as vLLM counts it).

The last part is OpenAI's JSON: responses and stream chunks of both APIs, and the two shapes of
logprobs (legacy ``tokens``/``token_logprobs``/``top_logprobs``/``text_offset``, and chat's
``content`` list). Each token's text is what it added to the output (a character split over two
tokens belongs to the second); an alternative's text is what it would have added there.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtp_runtime.detokenize import IncrementalDetokenizer, StopSequenceFilter
from lmtp_runtime.errors import TextInputError
from lmtp_runtime.prompt_format import format_prompt, has_chat_template
from lmtp_runtime.text_request import TextRequest

from .openai_requests import ChatMessage, Sampling
from .problems import ApiError

GENERATE_STREAM = "generate"
SCORE_STREAM = "score"
"""The ``stream_id`` of each op of an OpenAI request's prediction."""

UNLIMITED_TOKENS = 1_000_000
"""``max_tokens`` of a chat request that sets none: the model stops at its context window."""

CONTEXT_TOKENS = 8
"""Tokens before an alternative that its text is decoded with (leading spaces, byte pieces)."""


@dataclass(frozen=True)
class Prompt:
    """What the model reads: the token ids, and the text an ``echo`` shows."""

    ids: tuple[int, ...]
    text: str


def completion_prompt(tokenizer: Any, prompt: str | tuple[int, ...]) -> Prompt:
    """A legacy completion's prompt: text tokenized as text mode does, or ids taken as they are.

    Raises:
        ApiError: 400 when the prompt has no tokens.
    """
    if isinstance(prompt, tuple):
        if not prompt:
            raise _empty("prompt")
        return Prompt(prompt, tokenizer.decode(list(prompt), skip_special_tokens=True))
    try:
        formatted = format_prompt(tokenizer, TextRequest(prompt=prompt, prompt_template="{prompt}"))
    except TextInputError:  # nothing left once tokenized
        raise _empty("prompt") from None
    return Prompt(formatted.token_ids, prompt)


def chat_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> Prompt:
    """The conversation through the model's chat template, ready for the assistant's answer.

    Raises:
        ApiError: 400 when the model has no chat template, or the template refuses the messages.
    """
    if not has_chat_template(tokenizer):
        raise ApiError(
            400,
            "Bad request",
            "this model has no chat template: use /openai/v1/completions with a prompt you "
            "format yourself",
            param="messages",
        )
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    try:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # jinja2's TemplateError, or the template's raise_exception()
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ApiError(
            400,
            "Bad request",
            f"the model's chat template refuses these messages: {reason}",
            param="messages",
        ) from None
    # The template writes the special tokens it wants; adding them again would double the BOS.
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise _empty("messages")
    return Prompt(ids, text)


def lmtp_ops(
    prompt: Prompt,
    sampling: Sampling,
    *,
    top_logprobs: int,
    generate: bool = True,
    score_prompt: bool = False,
) -> list[list[Any]]:
    """The ``ops_batch_json`` of one request: its GENERATE, and a SCORE of its prompt if asked."""
    ops: list[list[Any]] = []
    if score_prompt and len(prompt.ids) > 1:
        score = {"stream_id": SCORE_STREAM, "prompt": prompt.ids[:1], "scored": prompt.ids[1:]}
        ops.append(["SCORE", score])
    if generate:
        args: dict[str, Any] = {
            "stream_id": GENERATE_STREAM,
            "prompt": list(prompt.ids),
            "max_tokens": UNLIMITED_TOKENS if sampling.max_tokens is None else sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_logprobs": top_logprobs,
        }
        optional = {
            "top_p": (sampling.top_p, 1.0),
            "presence_penalty": (sampling.presence_penalty, 0.0),
            "frequency_penalty": (sampling.frequency_penalty, 0.0),
            "seed": (sampling.seed, None),
        }
        args.update({name: value for name, (value, unset) in optional.items() if value != unset})
        if sampling.logit_bias:
            args["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
        ops.append(["GENERATE", args])
    return ops


# --- the model's answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprob:
    """One token of the output (or of an echoed prompt) with its log-probability."""

    text: str
    """What the token added to the text."""
    logprob: float | None
    """``None`` for the first token of an echoed prompt, which nothing precedes."""
    offset: int
    """Where its text starts, in the generated text (or in the prompt's)."""
    alternatives: tuple[tuple[str, float], ...] = ()
    """The likeliest tokens there, ``(text, logprob)``, likeliest first (the chosen one among
    them when it is one of the likeliest)."""


@dataclass
class Delta:
    """What one TOKEN line adds: text to show, and the logprobs of the tokens now shown."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.logprobs)

    def extend(self, other: Delta) -> None:
        self.text += other.text
        self.logprobs += other.logprobs


class TokenDecoder:
    """The GENERATE stream's TOKEN lines in; OpenAI's text, logprobs and finish reason out.

    Logprobs are held back with the text: a token's entry is given once the text it starts in is
    shown, and the entries of tokens after a stop sequence are dropped with their text.
    """

    def __init__(
        self, tokenizer: Any, *, stop: Sequence[str], context: Sequence[int], logprobs: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._stops = StopSequenceFilter(stop)
        self._logprobs = logprobs
        self._context = list(context[-CONTEXT_TOKENS:])
        self._generated = 0
        """Characters of generated text so far (shown or held back)."""
        self._shown = 0
        self._held: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def stopped_by_sequence(self) -> bool:
        """A stop sequence ended the text: the model would go on if nobody stopped it."""
        return self._stops.stopped

    def push(self, line: Mapping[str, Any]) -> Delta:
        """Take one TOKEN line of the GENERATE stream; what it adds to the output."""
        if self.finished:
            return Delta()
        self.completion_tokens += 1
        token = int(line["token"])
        if line.get("finish_reason") == "stop":  # end of sequence: not part of the text
            return self.end("stop")
        piece = self._detokenizer.push(token)
        if self._logprobs:
            self._held.append(
                TokenLogprob(
                    piece, float(line["logprob"]), self._generated, self._alternatives(line)
                )
            )
        self._context = [*self._context[1 - CONTEXT_TOKENS :], token]
        self._generated += len(piece)
        delta = self._show(self._stops.push(piece))
        if self._stops.stopped:
            self.finish_reason = "stop"
            self._held.clear()  # what comes after the stop sequence
            return delta
        if line.get("finish_reason") == "length":
            delta.extend(self.end("length"))
        return delta

    def end(self, reason: str) -> Delta:
        """The stream ended for ``reason``: what was held back (a split last character, text that
        might have begun a stop sequence), unless a stop sequence ended it first."""
        if self.finished:
            return Delta()
        self.finish_reason = reason
        flushed = self._detokenizer.flush()
        if flushed and self._held:
            last = self._held[-1]
            self._held[-1] = TokenLogprob(
                last.text + flushed, last.logprob, last.offset, last.alternatives
            )
        delta = self._show(self._stops.push(flushed))
        if self._stops.stopped:
            self.finish_reason = "stop"
        else:
            delta.extend(self._show(self._stops.flush()))
            delta.logprobs += self._held  # tokens that added nothing to the text
        self._held = []
        return delta

    def _show(self, text: str) -> Delta:
        """``text`` is shown now, with the entries of the tokens that start in what is shown."""
        self._shown += len(text)
        shown = [entry for entry in self._held if entry.offset < self._shown]
        self._held = self._held[len(shown) :]
        return Delta(text, shown)

    def _alternatives(self, line: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        top = line.get("top_logprobs") or {}
        ranked = sorted(top.items(), key=lambda item: -float(item[1]))
        texts = token_texts(self._tokenizer, self._context, [int(token) for token, _ in ranked])
        return tuple((text, float(logprob)) for text, (_, logprob) in zip(texts, ranked, strict=True))


def token_texts(tokenizer: Any, context: Sequence[int], tokens: Sequence[int]) -> list[str]:
    """What each of ``tokens`` would add after ``context`` (special tokens spelled out).

    The context is decoded once for all of them: this runs for every generated token.
    """
    before = tokenizer.decode(list(context), clean_up_tokenization_spaces=False)
    texts = []
    for token in tokens:
        after = tokenizer.decode([*context, token], clean_up_tokenization_spaces=False)
        if after.startswith(before):
            texts.append(after[len(before) :])
        else:
            texts.append(tokenizer.decode([token], clean_up_tokenization_spaces=False))
    return texts


def prompt_logprobs(
    tokenizer: Any, prompt: Prompt, scores: Sequence[Mapping[str, Any]]
) -> list[TokenLogprob]:
    """The echoed prompt's tokens: the first with a ``None`` logprob, the others with SCORE's."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in prompt.ids]
    if pieces:
        pieces[-1] += detokenizer.flush()
    entries, offset = [], 0
    for index, piece in enumerate(pieces):
        score = scores[index - 1] if 0 < index <= len(scores) else None
        logprob = None if score is None else float(score["logprob"])
        alternatives = () if logprob is None else ((piece, logprob),)
        entries.append(TokenLogprob(piece, logprob, offset, alternatives))
        offset += len(piece)
    return entries


# --- OpenAI's JSON -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """What every response and chunk of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Envelope:
        return cls(f"{prefix}-{secrets.token_hex(12)}", int(time.time()), model)


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_json(
    envelope: Envelope,
    *,
    text: str,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
    chunk: bool = False,
) -> dict[str, Any]:
    """A legacy completion, or one chunk of its stream (the same object, growing text)."""
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    body: dict[str, Any] = {
        "id": envelope.id,
        "object": "text_completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [choice],
    }
    if usage is not None or not chunk:
        body["usage"] = usage
    return body


def completion_logprobs_json(entries: Sequence[TokenLogprob], *, base: int = 0) -> dict[str, Any]:
    """Legacy logprobs: parallel lists; ``text_offset`` counts from ``base`` (an echoed prompt)."""
    return {
        "tokens": [entry.text for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [
            None if entry.logprob is None else dict(entry.alternatives) for entry in entries
        ],
        "text_offset": [base + entry.offset for entry in entries],
    }


def chat_json(
    envelope: Envelope,
    *,
    content: str,
    logprobs: dict[str, Any] | None,
    finish_reason: str,
    usage: dict[str, int],
) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": None}
    return {
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }


def chat_chunk_json(
    envelope: Envelope,
    *,
    delta: dict[str, Any] | None,
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One chunk of a chat stream; ``delta`` ``None``: the usage chunk, with no choice."""
    choices = []
    if delta is not None:
        choices = [
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ]
    body: dict[str, Any] = {
        "id": envelope.id,
        "object": "chat.completion.chunk",
        "created": envelope.created,
        "model": envelope.model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_logprobs_json(entries: Sequence[TokenLogprob], *, top: int) -> dict[str, Any]:
    """Chat logprobs: one object per token, with its ``top`` likeliest alternatives."""
    return {
        "content": [
            {
                **_chat_token(entry.text, entry.logprob),
                "top_logprobs": [_chat_token(text, lp) for text, lp in entry.alternatives[:top]],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def _chat_token(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _empty(param: str) -> ApiError:
    return ApiError(
        400, "Bad request", f"'{param}' has no tokens once tokenized: give some text", param=param
    )
