"""The OpenAI-compatible API's requests: the JSON bodies OpenAI's clients send, checked and typed.

Two requests, as OpenAI defines them: legacy completions (``POST /completions``: a ``prompt``,
``echo``, ``logprobs`` as a count) and chat completions (``POST /chat/completions``:
``messages``, ``logprobs`` as a flag with ``top_logprobs``). Both share the sampling fields
(:class:`Sampling`), with OpenAI's defaults and ranges: ``temperature`` 1 in [0, 2], ``top_p`` 1
in (0, 1], penalties 0 in [-2, 2], ``seed``, ``stop`` (a string or a list), ``logit_bias``.

Every problem is an :class:`~.problems.ApiError` 400 naming the field (``param``), as OpenAI
answers. Fields OpenAI's clients send that change nothing here (``user``, ``metadata``,
``store``...) are ignored; the ones that would ask for what this server cannot do (``n`` > 1,
``best_of`` > 1, ``suffix``, tools, a JSON ``response_format``) are refused, naming them. No I/O
here: the mapping onto the model is :mod:`.openai_api`, the HTTP is :mod:`.openai_routes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmtp_runtime.checks import is_integer, is_number
from lmtp_runtime.inputs import PENALTY_RANGE
from lmtp_runtime.requests import MIN_TEMPERATURE

from .problems import ApiError

MAX_TOP_LOGPROBS = 20
"""The most alternatives per token OpenAI's chat API gives (its legacy API gives 5)."""
MAX_TEMPERATURE = 2.0
MAX_LOGIT_BIAS = 100.0
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""The roles a message may have, and the role the chat template gets (OpenAI's newer name for
the system message is ``developer``)."""


@dataclass(frozen=True)
class Sampling:
    """How to generate, as OpenAI's fields say it."""

    max_tokens: int | None
    """``None``: completions' default (16), or as many as the context window takes for chat."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class CompletionRequest:
    """``POST /completions``."""

    model: str
    prompt: str | tuple[int, ...]
    """The text, or token ids as OpenAI also takes them."""
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    """``stream_options.include_usage``: a last chunk with the usage."""
    logprobs: int | None = None
    """How many alternatives to give per token; ``None``: no logprobs at all."""
    echo: bool = False


@dataclass(frozen=True)
class ChatMessage:
    role: str
    """As the chat template gets it: ``system``, ``user`` or ``assistant``."""
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """``POST /chat/completions``."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


DEFAULT_COMPLETION_TOKENS = 16
"""OpenAI's default ``max_tokens`` for legacy completions."""


def parse_completion(body: Mapping[str, Any]) -> CompletionRequest:
    """The completion request in ``body``.

    Raises:
        ApiError: 400 naming the field that is missing, of the wrong type or out of range.
    """
    fields = _Fields(body)
    fields.refuse_unless("suffix", lambda value: value is None, "is not supported")
    fields.refuse_unless("best_of", lambda value: value in (None, 1), "must be 1")
    logprobs = fields.integer("logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    stream = fields.boolean("stream")
    max_tokens = fields.integer("max_tokens", minimum=0)
    return CompletionRequest(
        model=fields.model(),
        prompt=_prompt(body.get("prompt")),
        sampling=_sampling(fields, DEFAULT_COMPLETION_TOKENS if max_tokens is None else max_tokens),
        stream=stream,
        include_usage=_include_usage(fields, stream),
        logprobs=logprobs,
        echo=fields.boolean("echo"),
    )


def parse_chat(body: Mapping[str, Any]) -> ChatRequest:
    """The chat completion request in ``body``.

    Raises:
        ApiError: 400 naming the field that is missing, of the wrong type or out of range.
    """
    fields = _Fields(body)
    for name in ("tools", "functions"):
        fields.refuse_unless(name, lambda value: not value, "is not supported: no tool calls")
    fields.refuse_unless(
        "tool_choice", lambda value: value in (None, "none"), "is not supported: no tool calls"
    )
    fields.refuse_unless(
        "response_format",
        lambda value: value is None or (isinstance(value, dict) and value.get("type") == "text"),
        "is not supported: only plain text",
    )
    logprobs = fields.boolean("logprobs")
    top_logprobs = fields.integer("top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise _invalid("top_logprobs", "needs 'logprobs': true")
    max_tokens = fields.integer("max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = fields.integer("max_tokens", minimum=1)
    stream = fields.boolean("stream")
    return ChatRequest(
        model=fields.model(),
        messages=_messages(body.get("messages")),
        sampling=_sampling(fields, max_tokens),
        stream=stream,
        include_usage=_include_usage(fields, stream),
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
    )


def _sampling(fields: _Fields, max_tokens: int | None) -> Sampling:
    fields.refuse_unless("n", lambda value: value in (None, 1), "must be 1: one choice per request")
    temperature = fields.number("temperature", minimum=0.0, maximum=MAX_TEMPERATURE, default=1.0)
    top_p = fields.number("top_p", minimum=0.0, maximum=1.0, default=1.0)
    if top_p == 0.0:
        raise _invalid("top_p", "must be above 0")
    return Sampling(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,  # below: greedy
        top_p=top_p,
        seed=fields.integer("seed", minimum=0),
        presence_penalty=fields.number(
            "presence_penalty", minimum=-PENALTY_RANGE, maximum=PENALTY_RANGE, default=0.0
        ),
        frequency_penalty=fields.number(
            "frequency_penalty", minimum=-PENALTY_RANGE, maximum=PENALTY_RANGE, default=0.0
        ),
        stop=_stop(fields.raw("stop")),
        logit_bias=_logit_bias(fields.raw("logit_bias")),
    )


def _include_usage(fields: _Fields, stream: bool) -> bool:
    options = fields.raw("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _invalid("stream_options", "must be an object")
    if not stream:
        raise _invalid("stream_options", "is only allowed with 'stream': true")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise _invalid("stream_options", "'include_usage' must be true or false")
    return include


def _prompt(value: Any) -> str | tuple[int, ...]:
    """A string, a list of one string, token ids, or a list of one list of token ids."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(is_integer(item) for item in value):
        return tuple(value)
    if value is None:
        raise _invalid("prompt", "is required (a string)")
    raise _invalid("prompt", "must be a string, or token ids (one prompt per request)")


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "must be a non-empty list of messages")
    return tuple(_message(index, message) for index, message in enumerate(value))


def _message(index: int, message: Any) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _invalid(param, "must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in CHAT_ROLES:
        roles = ", ".join(CHAT_ROLES)
        raise _invalid(f"{param}.role", f"must be one of {roles}, got {_preview(role)}")
    if message.get("tool_calls"):
        raise _invalid(f"{param}.tool_calls", "is not supported: no tool calls")
    return ChatMessage(CHAT_ROLES[role], _content(f"{param}.content", message.get("content")))


def _content(param: str, content: Any) -> str:
    """A message's text: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _invalid(param, "may only hold text parts ({'type': 'text', 'text': ...})")
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(param, "has a text part without a 'text' string")
            texts.append(text)
        return "".join(texts)
    raise _invalid(param, "must be a string or a list of text parts")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("stop", "must be a string or a list of strings")
    return tuple(item for item in value if item)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _invalid("logit_bias", "must be an object of token ids to biases")
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdecimal()):
            raise _invalid("logit_bias", f"has key {_preview(key)}, which is not a token id")
        if not is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise _invalid("logit_bias", f"gives token {key} {_preview(bias)}, not in [-100, 100]")
        pairs.append((int(key), float(bias)))
    return tuple(pairs)


class _Fields:
    """Typed access to a request's top-level fields, with errors naming the field."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._body = body

    def raw(self, name: str) -> Any:
        return self._body.get(name)

    def model(self) -> str:
        model = self._body.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model", "is required (the name of the served model)")
        return model

    def boolean(self, name: str) -> bool:
        value = self._body.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _invalid(name, f"must be true or false, got {_preview(value)}")
        return value

    def integer(
        self, name: str, *, minimum: int, maximum: int | None = None
    ) -> int | None:
        value = self._body.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_integer(value):
            raise _invalid(name, f"must be an integer, got {_preview(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise _invalid(name, f"must be {bounds}, got {value}")
        return value

    def number(self, name: str, *, minimum: float, maximum: float, default: float) -> float:
        value = self._body.get(name)
        if value is None:
            return default
        if not is_number(value):
            raise _invalid(name, f"must be a number, got {_preview(value)}")
        if not minimum <= value <= maximum:
            raise _invalid(name, f"must be from {minimum:g} to {maximum:g}, got {value:g}")
        return float(value)

    def refuse_unless(self, name: str, allowed: Any, reason: str) -> None:
        if not allowed(self._body.get(name)):
            raise _invalid(name, reason)


def _invalid(param: str, problem: str) -> ApiError:
    return ApiError(400, "Bad request", f"'{param}' {problem}", param=param)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
