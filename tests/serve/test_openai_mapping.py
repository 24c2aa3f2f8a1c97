"""The OpenAI-compatible API's mapping on its own: request bodies checked, TOKEN lines decoded.

No servers: the request parser on plain JSON, and the decoder fed the TOKEN lines a model would
send, with a real (tiny, trained) byte-level BPE tokenizer. What the served model answers through
the whole stack is in ``tests/e2e/test_openai_api.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmtp_cog.serve.openai_api import Prompt, TokenDecoder, lmtp_ops
from lmtp_cog.serve.openai_requests import ChatMessage, parse_chat, parse_completion
from lmtp_cog.serve.problems import ApiError
from lmtp_cog.tiny_models import make_tokenizer

TEXT = "Hello world. The quick brown fox"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tokenizer(Path(tmp_path_factory.mktemp("tokenizer")))


def _lines(ids: list[int], *, last: str | None = None) -> list[dict[str, Any]]:
    """The TOKEN lines of a GENERATE of ``ids`` (logprob -0.5 - j/10), the last one ``last``."""
    return [
        {
            "stream_id": "generate",
            "token": token,
            "logprob": -0.5 - j / 10,
            "finish_reason": last if j == len(ids) - 1 else None,
            "top_logprobs": {str(token): -0.5 - j / 10},
        }
        for j, token in enumerate(ids)
    ]


def _decode(decoder: TokenDecoder, lines: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    text, entries = "", []
    for line in lines:
        delta = decoder.push(line)
        text += delta.text
        entries += delta.logprobs
    return text, entries


# --- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("Hi", "Hi"), (["Hi"], "Hi"), ([5, 6], (5, 6)), ([[5, 6]], (5, 6))],
)
def test_a_prompt_is_text_or_token_ids(prompt: Any, expected: Any) -> None:
    assert parse_completion({"model": "m", "prompt": prompt}).prompt == expected


def test_openais_defaults_apply_and_a_tiny_temperature_is_greedy() -> None:
    completion = parse_completion({"model": "m", "prompt": "Hi", "temperature": 1e-9})
    chat = parse_chat({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})

    assert completion.sampling.max_tokens == 16 and completion.sampling.temperature == 0.0
    assert chat.sampling.max_tokens is None and chat.sampling.temperature == 1.0
    assert (chat.sampling.top_p, chat.sampling.stop, chat.logprobs) == (1.0, (), False)


def test_chat_messages_become_the_templates_roles_and_texts() -> None:
    chat = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stop": "\n",
        }
    )

    assert chat.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"))
    assert chat.sampling.max_tokens == 7 and chat.sampling.stop == ("\n",)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "Hi"}, "model"),
        ({"model": "m", "prompt": "Hi", "top_p": 0}, "top_p"),
        ({"model": "m", "prompt": "Hi", "seed": -1}, "seed"),
        ({"model": "m", "prompt": "Hi", "stream_options": {}}, "stream_options"),
        ({"model": "m", "prompt": "Hi", "echo": "yes"}, "echo"),
        ({"model": "m", "prompt": "Hi", "suffix": "!"}, "suffix"),
        ({"model": "m", "prompt": "Hi", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"model": "m", "prompt": "Hi", "presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_completion(body)

    assert (refused.value.status, refused.value.param) == (400, param)
    assert refused.value.detail.startswith(f"'{param}' ")


def test_a_request_becomes_a_generate_with_only_the_settings_it_changes() -> None:
    chat = parse_chat(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "seed": 3, "top_p": 0.5}
    )

    [(command, args)] = lmtp_ops(Prompt((1, 2), "x"), chat.sampling, top_logprobs=0)

    assert command == "GENERATE"
    assert args == {
        "stream_id": "generate",
        "prompt": [1, 2],
        "max_tokens": 1_000_000,
        "temperature": 1.0,
        "top_logprobs": 0,
        "top_p": 0.5,
        "seed": 3,
    }


# --- decoding ------------------------------------------------------------------------------------


def test_a_stop_sequence_cuts_the_text_and_the_logprobs_of_what_follows(tokenizer: Any) -> None:
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    decoder = TokenDecoder(tokenizer, stop=["e qu"], context=[], logprobs=True)

    text, entries = _decode(decoder, _lines(ids))

    assert text == "Hello world. Th"
    assert (decoder.finish_reason, decoder.stopped_by_sequence) == ("stop", True)
    # " The" starts before the cut and is kept whole; " quick" and what follows are not.
    assert [entry.text for entry in entries] == ["Hello", " world", ".", " The"]
    assert [entry.offset for entry in entries] == [0, 5, 11, 12]
    assert decoder.completion_tokens == 5  # the model had sent " quick" when the stop was seen


def test_an_end_of_sequence_token_ends_the_text_and_is_not_part_of_it(tokenizer: Any) -> None:
    ids = tokenizer("Hello world", add_special_tokens=False).input_ids
    decoder = TokenDecoder(tokenizer, stop=["never"], context=[], logprobs=True)

    text, entries = _decode(decoder, _lines([*ids, tokenizer.eos_token_id], last="stop"))

    assert text == "Hello world" and [entry.text for entry in entries] == ["Hello", " world"]
    assert decoder.finish_reason == "stop" and not decoder.stopped_by_sequence
    assert decoder.completion_tokens == len(ids) + 1


def test_text_held_back_for_a_stop_sequence_comes_out_at_the_limit(tokenizer: Any) -> None:
    ids = tokenizer("Hello world", add_special_tokens=False).input_ids
    decoder = TokenDecoder(tokenizer, stop=[" world!"], context=[], logprobs=False)

    deltas = [decoder.push(line) for line in _lines(ids, last="length")]

    assert [delta.text for delta in deltas] == ["Hello", " world"]  # " world": at the end
    assert decoder.finish_reason == "length"
