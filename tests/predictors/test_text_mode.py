"""Text mode of the one predict function: a prompt in, generated text streamed out.

Expected text always comes from plain transformers on the same checkpoint (a manual argmax loop
over full forward passes, the tokenizer's own ``apply_chat_template``, transformers' own
repetition-penalty processor) or from the same predictor's LMTP mode, never from hard-coded
model output. Models are the tiny random checkpoints of ``lmtp_cog.tiny_models``: one
Llama with a chat template, one GPT-2 without, and a Llama over a byte-level tokenizer whose
tokens split UTF-8 characters.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lmtp_runtime.detokenize import (
    REPLACEMENT_CHARACTER,
    IncrementalDetokenizer,
    StopSequenceFilter,
)
from lmtp_runtime.errors import TextInputError
from lmtp_runtime.predictor import NOT_READY, LmtpPredictor
from lmtp_runtime.prompt_format import format_prompt
from lmtp_runtime.text_request import parse_stop_sequences, text_request

from lmtp_cog.tiny_models import BOS, EOS, PAD

PROMPT = "What is the answer?"
SYSTEM = "Be brief."
GREEDY = {"temperature": 0}
MULTIBYTE_TEXT = "Café crème brûlée, naïve façade: 😀 🎉 ünïcödé ✓ — ok"


# --- checkpoints, predictors and the transformers reference ---------------------------------------


@pytest.fixture(scope="module")
def chat_dir(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint(arch="llama", chat_template=True)


@pytest.fixture(scope="module")
def chat(chat_dir: Path, load_predictor: Callable[..., Any]) -> Any:
    return load_predictor(chat_dir)


@pytest.fixture(scope="module")
def plain(gpt2_dir: Path, load_predictor: Callable[..., Any]) -> Any:
    """A model whose tokenizer has no chat template."""
    assert not load_predictor(gpt2_dir).tokenizer.chat_template
    return load_predictor(gpt2_dir)


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_byte_level_checkpoint(tmp_path_factory.mktemp("byte-level"))


@functools.cache
def reference_model(checkpoint: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()


@functools.cache
def reference_tokenizer(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))


def greedy_reference(
    checkpoint: Path,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    eos: Iterable[int],
    banned_steps: int = 0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> tuple[list[int], bool]:
    """Plain transformers greedy decoding: ``(new ids without the EOS, whether an EOS ended it)``.

    ``banned_steps``: the EOS ids are masked out of the first this-many steps (min_new_tokens).
    ``presence_penalty``/``frequency_penalty``: OpenAI's and vLLM's definition, over the tokens
    generated so far: ``logits - presence * [count > 0] - frequency * count``.
    """
    from transformers import RepetitionPenaltyLogitsProcessor

    model, eos = reference_model(checkpoint), set(eos)
    penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty)
    ids = list(prompt_ids)
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[:, -1].float()
        if repetition_penalty != 1.0:
            logits = penalty(torch.tensor([ids]), logits)
        counts = torch.bincount(
            torch.tensor(ids[len(prompt_ids) :], dtype=torch.long), minlength=logits.shape[-1]
        ).float()
        logits = logits - presence_penalty * (counts > 0) - frequency_penalty * counts
        if step < banned_steps:
            logits[0, sorted(eos)] = float("-inf")
        token = int(logits[0].argmax())
        if token in eos:
            return ids[len(prompt_ids) :], True
        ids.append(token)
    return ids[len(prompt_ids) :], False


def decode(checkpoint: Path, ids: Sequence[int]) -> str:
    return reference_tokenizer(checkpoint).decode(
        list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def eos_id(checkpoint: Path) -> int:
    return reference_tokenizer(checkpoint).convert_tokens_to_ids(EOS)


def chunks_of(predictor: Any, **inputs: Any) -> list[str]:
    chunks = list(predictor.stream(**inputs))
    assert all(isinstance(chunk, str) and chunk for chunk in chunks), chunks
    return chunks


def text_of(predictor: Any, **inputs: Any) -> str:
    return "".join(chunks_of(predictor, **inputs))


def chat_ids(checkpoint: Path, prompt: str, system: str | None = None) -> list[int]:
    """The prompt as the tokenizer's own ``apply_chat_template(tokenize=True)`` makes it."""
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    encoded = reference_tokenizer(checkpoint).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def text_ids(checkpoint: Path, text: str) -> list[int]:
    return list(reference_tokenizer(checkpoint)(text)["input_ids"])


def new_token_counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The ``N new tokens`` of every text prediction logged so far."""
    return [
        int(match.group(1))
        for record in caplog.records
        if (match := re.search(r"(\d+) new tokens", record.getMessage()))
    ]


# --- prompt formatting and greedy decoding --------------------------------------------------------


def test_greedy_text_equals_transformers_greedy_decoding_of_the_chat_formatted_prompt(
    chat: Any, chat_dir: Path
) -> None:
    prompt_ids = chat_ids(chat_dir, PROMPT, SYSTEM)
    assert prompt_ids != text_ids(chat_dir, PROMPT)  # the chat template changes the input
    expected, _ = greedy_reference(chat_dir, prompt_ids, 12, eos=[eos_id(chat_dir)])

    chunks = chunks_of(chat, prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=12, **GREEDY)

    assert "".join(chunks) == decode(chat_dir, expected)
    assert len(chunks) > 1  # streamed piece by piece, not in one block


def test_a_prompt_template_overrides_the_chat_template(chat: Any, chat_dir: Path) -> None:
    template = "### System\n{system_prompt}\n### Question\n{prompt}\n### Answer {json: {}}\n"
    formatted = template.replace("{system_prompt}", SYSTEM).replace("{prompt}", PROMPT)
    prompt_ids = text_ids(chat_dir, formatted)
    expected, _ = greedy_reference(chat_dir, prompt_ids, 10, eos=[eos_id(chat_dir)])

    text = text_of(
        chat,
        prompt=PROMPT,
        system_prompt=SYSTEM,
        prompt_template=template,
        max_new_tokens=10,
        **GREEDY,
    )

    assert text == decode(chat_dir, expected)


def test_without_a_chat_template_the_prompt_is_used_as_is(plain: Any, gpt2_dir: Path) -> None:
    expected, _ = greedy_reference(gpt2_dir, text_ids(gpt2_dir, PROMPT), 10, eos=[eos_id(gpt2_dir)])
    assert text_of(plain, prompt=PROMPT, max_new_tokens=10, **GREEDY) == decode(gpt2_dir, expected)

    with_system = text_ids(gpt2_dir, f"{SYSTEM}\n\n{PROMPT}")
    expected, _ = greedy_reference(gpt2_dir, with_system, 10, eos=[eos_id(gpt2_dir)])
    text = text_of(plain, prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=10, **GREEDY)
    assert text == decode(gpt2_dir, expected)


def test_text_mode_and_lmtp_share_the_decoding(chat: Any, chat_dir: Path) -> None:
    """Sampling with every setting: the text is the LMTP stream's tokens, decoded."""
    settings = {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.3}
    op = {"prompt": chat_ids(chat_dir, PROMPT), "max_tokens": 16, "seed": 11, **settings}

    lines = list(chat.stream(ops_batch_json=json.dumps([["GENERATE", op]])))
    tokens = [json.loads(line.split(" ", 1)[1]) for chunk in lines for line in chunk.splitlines()]
    ids = [t["token"] for t in tokens if t["finish_reason"] != "stop"]

    text = text_of(chat, prompt=PROMPT, max_new_tokens=16, seed=11, **settings)
    assert text == decode(chat_dir, ids)


def test_repetition_penalty_is_transformers_repetition_penalty(chat: Any, chat_dir: Path) -> None:
    prompt_ids = chat_ids(chat_dir, PROMPT)
    expected, _ = greedy_reference(
        chat_dir, prompt_ids, 16, eos=[eos_id(chat_dir)], repetition_penalty=1.8
    )
    unpenalised, _ = greedy_reference(chat_dir, prompt_ids, 16, eos=[eos_id(chat_dir)])
    assert expected != unpenalised  # the penalty matters for this prompt

    text = text_of(chat, prompt=PROMPT, max_new_tokens=16, repetition_penalty=1.8, **GREEDY)

    assert text == decode(chat_dir, expected)


@pytest.mark.parametrize(
    "penalties",
    [{"presence_penalty": 1.5}, {"frequency_penalty": 0.8}, {"presence_penalty": -0.5, "frequency_penalty": 2.0}],
    ids=["presence", "frequency", "both"],
)
def test_presence_and_frequency_penalties_are_openais(
    chat: Any, chat_dir: Path, penalties: dict[str, float]
) -> None:
    """Replicate's LLMs (vLLM) take OpenAI's penalties; text mode applies them over the output."""
    prompt_ids = chat_ids(chat_dir, PROMPT)
    expected, _ = greedy_reference(chat_dir, prompt_ids, 24, eos=[eos_id(chat_dir)], **penalties)
    unpenalised, _ = greedy_reference(chat_dir, prompt_ids, 24, eos=[eos_id(chat_dir)])
    assert expected != unpenalised  # the penalty matters for this prompt

    text = text_of(chat, prompt=PROMPT, max_new_tokens=24, **penalties, **GREEDY)

    assert text == decode(chat_dir, expected)


# --- token limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_new_tokens", "max_length", "max_tokens"])
def test_the_token_limit_and_its_aliases(
    limit: str, chat: Any, chat_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lmtp_runtime")
    expected, ended_by_eos = greedy_reference(
        chat_dir, chat_ids(chat_dir, PROMPT), 7, eos=[eos_id(chat_dir)]
    )

    text = text_of(chat, prompt=PROMPT, **{limit: 7}, **GREEDY)

    assert text == decode(chat_dir, expected)
    assert new_token_counts(caplog) == [len(expected) + ended_by_eos]


def test_the_default_token_limit_is_128(chat: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lmtp_runtime")
    # With the end-of-sequence token suppressed throughout, only the limit ends the text.
    chunks_of(chat, prompt=PROMPT, min_new_tokens=128, **GREEDY)
    assert new_token_counts(caplog) == [128]


def test_min_new_tokens_suppresses_the_end_of_sequence_token(
    chat: Any, chat_dir: Path, make_checkpoint: Callable[..., Path], load_predictor: Any
) -> None:
    # The same weights, with an ordinary token of the greedy output declared end-of-sequence.
    prompt_ids = chat_ids(chat_dir, PROMPT)
    greedy, _ = greedy_reference(chat_dir, prompt_ids, 20, eos=[eos_id(chat_dir)])
    cut = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])
    stop_token = greedy[cut]
    early_dir = make_checkpoint(
        arch="llama", chat_template=True, eos_token_id=[stop_token, eos_id(chat_dir)]
    )
    early = load_predictor(early_dir)
    eos = [stop_token, eos_id(chat_dir)]

    assert text_of(early, prompt=PROMPT, max_new_tokens=20, **GREEDY) == decode(
        chat_dir, greedy[:cut]
    )

    floor = cut + 3
    expected, _ = greedy_reference(early_dir, prompt_ids, 20, eos=eos, banned_steps=floor)
    text = text_of(early, prompt=PROMPT, max_new_tokens=20, min_new_tokens=floor, **GREEDY)
    assert text == decode(early_dir, expected)
    assert len(expected) >= floor
    # min_tokens is newer Replicate LLMs' name for it.
    assert text_of(early, prompt=PROMPT, max_new_tokens=20, min_tokens=floor, **GREEDY) == text
    # -1 is Replicate's "no minimum".
    assert text_of(early, prompt=PROMPT, max_new_tokens=20, min_new_tokens=-1, **GREEDY) == (
        decode(chat_dir, greedy[:cut])
    )


def test_a_seed_makes_sampling_reproducible(chat: Any) -> None:
    inputs = {"prompt": PROMPT, "max_new_tokens": 20, "temperature": 1.0, "top_p": 1.0}
    first = text_of(chat, seed=1234, **inputs)
    assert text_of(chat, seed=1234, **inputs) == first
    assert text_of(chat, seed=1235, **inputs) != first


# --- stop sequences -------------------------------------------------------------------------------


def test_stop_sequences_cut_the_text_and_never_leak(chat: Any) -> None:
    inputs = {"prompt": PROMPT, "max_new_tokens": 30, **GREEDY}
    pieces = chunks_of(chat, **inputs)
    full = "".join(pieces)
    # A stop sequence across the boundary of two streamed pieces, well inside the text.
    middle = len(pieces) // 2
    stop = pieces[middle - 1][-2:] + pieces[middle][:2]
    assert len(stop) >= 3 and full.find(stop) > 0

    chunks = chunks_of(chat, stop_sequences=f"§never§,{stop}", **inputs)

    assert "".join(chunks) == full[: full.find(stop)]
    assert len(chunks) < len(pieces)


def test_a_stop_sequence_ends_the_generation(chat: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lmtp_runtime")
    inputs = {"prompt": PROMPT, "max_new_tokens": 30, **GREEDY}
    full = text_of(chat, **inputs)
    stop = full[3:6]

    assert text_of(chat, stop_sequences=stop, **inputs) == full[: full.find(stop)]

    [whole, cut] = new_token_counts(caplog)
    assert cut < whole
    assert "ended by a stop sequence" in caplog.records[-1].getMessage()


def test_stop_sequence_filter_holds_back_what_could_start_a_stop() -> None:
    stops = StopSequenceFilter(["<end>", "\n\n"])
    assert [stops.push(piece) for piece in ["ab", "c<", "en", "x<e", "\n"]] == [
        "ab",
        "c",
        "",
        "<enx",
        "<e",
    ]
    assert stops.push("\ntail") == ""
    assert stops.stopped and stops.flush() == ""

    unfinished = StopSequenceFilter(["<end>"])
    assert unfinished.push("see <en") == "see "
    assert unfinished.flush() == "<en"  # the generation ended: it was no stop after all


def test_stop_sequences_are_comma_separated_and_kept_exactly() -> None:
    assert parse_stop_sequences("<end>,<stop>") == ("<end>", "<stop>")
    assert parse_stop_sequences(" User:,,\n") == (" User:", "\n")
    assert parse_stop_sequences("") == parse_stop_sequences(None) == ()


# --- multi-byte characters ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback"])
def test_the_detokenizer_never_splits_a_character(kind: str, tmp_path: Path) -> None:
    tokenizer = make_byte_level_tokenizer(tmp_path) if kind == "byte-level" else (
        make_byte_fallback_tokenizer()
    )
    ids = tokenizer(MULTIBYTE_TEXT, add_special_tokens=False)["input_ids"]
    # The tokenizer does split characters, or this test would prove nothing.
    assert any(tokenizer.decode([i]) == REPLACEMENT_CHARACTER for i in ids)

    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]

    assert not any(REPLACEMENT_CHARACTER in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == MULTIBYTE_TEXT
    assert sum(1 for piece in pieces if piece) < len(ids)  # some tokens waited for the next


def test_streamed_text_never_splits_a_character(byte_dir: Path, load_predictor: Any) -> None:
    """Random bytes from a byte-level model: pieces end on whole characters, and add up."""
    predictor = load_predictor(byte_dir)
    prompt_ids = list(reference_tokenizer(byte_dir)(MULTIBYTE_TEXT)["input_ids"])
    settings = {"temperature": 1.0, "seed": 3}
    op = {"prompt": prompt_ids, "max_tokens": 60, **settings}
    lines = list(predictor.stream(ops_batch_json=json.dumps([["GENERATE", op]])))
    tokens = [json.loads(line.split(" ", 1)[1]) for chunk in lines for line in chunk.splitlines()]
    ids = [t["token"] for t in tokens if t["finish_reason"] != "stop"]

    chunks = chunks_of(predictor, prompt=MULTIBYTE_TEXT, max_new_tokens=60, **settings)

    assert "".join(chunks) == decode(byte_dir, ids)
    assert not any(chunk.endswith(REPLACEMENT_CHARACTER) for chunk in chunks[:-1])
    assert len(chunks) < len(ids)  # some bytes waited for the rest of their character


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [{}, {"prompt": None, "ops_batch_json": None}, {"prompt": "", "ops_batch_json": "[]"}],
    ids=["neither", "both None", "both"],
)
def test_exactly_one_of_prompt_and_ops_batch_json(chat: Any, inputs: dict[str, Any]) -> None:
    with pytest.raises(TextInputError, match="prompt.*ops_batch_json"):
        list(chat.stream(**inputs))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", 0),
        ("max_length", 0),
        ("max_tokens", -3),
        ("min_new_tokens", -2),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("seed", -1),
        ("max_new_tokens", "many"),
        ("temperature", float("nan")),
        ("temperature", 1e-300),
        ("temperature", 1e300),
        ("repetition_penalty", 1e39),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("min_tokens", -2),
        ("stop_sequences", ["a", "b"]),
    ],
)
def test_out_of_range_inputs_are_refused_naming_the_input(
    chat: Any, name: str, value: Any
) -> None:
    with pytest.raises(TextInputError, match=rf"^{name} must be"):
        list(chat.stream(prompt=PROMPT, **{name: value}))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prompt_template": "Q: {question}"}, "prompt_template must contain {prompt}"),
        (
            {"prompt_template": "Q: {prompt}", "system_prompt": SYSTEM},
            "prompt_template has no {system_prompt}",
        ),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens .9. is more than"),
        ({"max_length": 5, "max_tokens": 6}, "token limits disagree"),
        ({"min_new_tokens": 3, "min_tokens": 4}, "min_tokens is another name for min_new_tokens"),
        ({"prompt": "word " * 400}, "more than the model's context window of 256"),
    ],
)
def test_inconsistent_text_inputs_are_refused(
    chat: Any, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TextInputError, match=message):
        list(chat.stream(**{"prompt": PROMPT, **inputs}))


def test_agreeing_token_limits_are_fine(chat: Any) -> None:
    both = text_of(chat, prompt=PROMPT, max_length=5, max_new_tokens=5, **GREEDY)
    assert both == text_of(chat, prompt=PROMPT, max_tokens=5, **GREEDY)


# --- direct Python calls --------------------------------------------------------------------------


def test_direct_calls_with_the_defaults_work_in_both_modes(chat: Any) -> None:
    assert text_of(chat, prompt="hi")  # temperature 0.7, top_p 0.95, 128 tokens at most
    [info] = list(chat.stream(ops_batch_json=json.dumps([["MODEL_INFO", {"stream_id": 1}]])))
    assert info.startswith('MSG {"stream_id":1,"model_info":')


@pytest.mark.parametrize("ops_batch_json", ["GENERATE please", ""])
def test_lmtp_errors_stay_in_band(chat: Any, ops_batch_json: str) -> None:
    [line] = list(chat.stream(ops_batch_json=ops_batch_json))
    assert line.startswith('MSG {"stream_id":null,"error":"invalid ops_batch_json: ')


def test_an_empty_prompt_is_refused_when_nothing_is_left_to_read(plain: Any) -> None:
    with pytest.raises(TextInputError, match="The prompt is empty once formatted"):
        list(plain.stream(prompt=""))


def test_text_mode_before_setup_fails_with_a_clear_message() -> None:
    with pytest.raises(RuntimeError, match=re.escape(NOT_READY)):
        list(LmtpPredictor().stream(prompt=PROMPT))


# --- tokenizers that split characters -------------------------------------------------------------

MULTIBYTE_CORPUS = (
    "Hello world. Café, crème, naïve, façade, über, señor. The quick brown fox. "
    "Numbers 0 1 2 3. Emoji 😀 and 🎉 are four bytes each. " * 4
)


def make_byte_level_tokenizer(directory: Path, *, vocab_size: int = 300) -> Any:
    """A GPT-2 style byte-level BPE: all 256 bytes plus few merges, so é and 😀 span tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([MULTIBYTE_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    fast.save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


def make_byte_fallback_tokenizer() -> Any:
    """A Llama-style (SentencePiece) BPE: ``▁`` for spaces, other characters as byte tokens."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=[PAD, BOS, EOS], limit_alphabet=40, show_progress=False
    )
    trained.train_from_iterator([MULTIBYTE_CORPUS], trainer=trainer)
    spec = json.loads(trained.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def make_byte_level_checkpoint(directory: Path) -> Path:
    """A random tiny Llama over :func:`make_byte_level_tokenizer`'s vocabulary."""
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    tokenizer = make_byte_level_tokenizer(directory)
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(str(directory))
    return directory


# --- prompts the client formatted already ----------------------------------------------------------

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_CHAT_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's own
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint with Llama 3's special tokens and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtp_cog.tiny_models import make_model

    out = make_model(tmp_path_factory.mktemp("llama3"), arch="llama")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.add_special_tokens(
        {"bos_token": LLAMA3_SPECIAL[0], "additional_special_tokens": LLAMA3_SPECIAL[1:]}
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    model.resize_token_embeddings(len(tokenizer))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def test_a_prompt_litellm_formatted_for_llama_3_is_not_wrapped_again(
    llama3_dir: Path, load_predictor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM applies the Llama 3 chat template itself for models named meta-llama-3...instruct
    and sends the result as ``prompt``. The model must read that text once, exactly as its own
    chat template renders the conversation, not nested in a second one."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.litellm_core_utils.prompt_templates.factory import prompt_factory

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
    ]
    sent = prompt_factory(model="meta/meta-llama-3-8b-instruct", messages=messages)
    assert sent.startswith("<|begin_of_text|><|start_header_id|>system")  # LiteLLM's own work
    tokenizer = reference_tokenizer(llama3_dir)

    received = format_prompt(tokenizer, text_request(prompt=sent))

    assert received.formatting == "already formatted" and received.text == sent
    once = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert list(received.token_ids) == list(getattr(once, "input_ids", once))
    assert received.token_ids.count(tokenizer.bos_token_id) == 1

    # And the text generated is greedy decoding of exactly those ids.
    predictor = load_predictor(llama3_dir)
    expected, _ = greedy_reference(llama3_dir, received.token_ids, 8, eos=[eos_id(llama3_dir)])
    assert text_of(predictor, prompt=sent, max_new_tokens=8, **GREEDY) == decode(
        llama3_dir, expected
    )


def test_a_plain_prompt_still_gets_the_chat_template(llama3_dir: Path) -> None:
    tokenizer = reference_tokenizer(llama3_dir)
    received = format_prompt(tokenizer, text_request(prompt="Who are you?"))
    assert received.formatting == "chat_template"
    assert received.text.startswith("<|begin_of_text|><|start_header_id|>user")


def test_prompt_template_braces_prompt_sends_the_prompt_as_it_is(chat: Any, chat_dir: Path) -> None:
    """The documented recipe for any other pre-formatted prompt: prompt_template = "{prompt}"."""
    tokenizer = reference_tokenizer(chat_dir)
    formatted = "User: hi there\nAssistant:"
    received = format_prompt(tokenizer, text_request(prompt=formatted, prompt_template="{prompt}"))
    assert received.text == formatted and received.formatting == "prompt_template"


def test_a_system_prompt_beside_a_formatted_prompt_is_refused(llama3_dir: Path) -> None:
    tokenizer = reference_tokenizer(llama3_dir)
    with pytest.raises(TextInputError, match="already formatted"):
        format_prompt(
            tokenizer, text_request(prompt="<|begin_of_text|>hi", system_prompt="Be brief.")
        )
