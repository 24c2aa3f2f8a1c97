"""The Cog inputs of ``run()``: one table, the source of both ``predict.py`` and text mode.

``cog build`` reads a model's interface from ``predict.py``'s *source*, without running it
(cog >= 0.22, ``pkg/schema/python``): every default, bound and description must be written there
as a literal, or cog silently drops it (an input whose default it cannot read becomes required).
So the builder renders ``run()``'s signature from :data:`RUN_INPUTS`, value by value, and the
runtime takes its defaults from the same rows (:func:`input_defaults`, and the ``DEFAULT_*``
constants the rows are written with): the two cannot drift.

Stdlib only: the builder imports this module without torch or cog.
"""

from __future__ import annotations

from dataclasses import dataclass

InputValue = str | int | float | None


def is_plain_text(text: str) -> bool:
    """Whether a string literal of ``text`` reads back as ``text`` in cog's parser: printable
    ASCII without a quote or a backslash. cog copies the text between the quotes without
    decoding escapes, so anything else would reach the schema altered."""
    return text.isascii() and text.isprintable() and not set(text) & {'"', "\\"}


@dataclass(frozen=True)
class CogInput:
    """One input of ``run()``, as ``predict.py`` declares it: ``name: TYPE = Input(...)``."""

    name: str
    type: type[str] | type[int] | type[float]
    default: InputValue
    """``None``: optional, and ``None`` when not given (the type is then ``TYPE | None``)."""
    description: str
    ge: int | float | None = None
    le: int | float | None = None

    def __post_init__(self) -> None:
        if not self.description or not is_plain_text(self.description):
            raise ValueError(f"input {self.name}: the description must be plain ASCII text")
        if self.default is not None and not isinstance(self.default, self.type):
            raise ValueError(f"input {self.name}: the default must be a {self.type.__name__}")

    @property
    def nullable(self) -> bool:
        return self.default is None

    @property
    def annotation(self) -> str:
        """The parameter's annotation as ``predict.py`` writes it, e.g. ``int | None``."""
        name = self.type.__name__
        return f"{name} | None" if self.nullable else name


OPS_BATCH_JSON = "ops_batch_json"
PROMPT = "prompt"
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_MIN_NEW_TOKENS = 0
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 0
DEFAULT_REPETITION_PENALTY = 1.0
DEFAULT_PRESENCE_PENALTY = 0.0
DEFAULT_FREQUENCY_PENALTY = 0.0
PENALTY_RANGE = 2.0
"""``presence_penalty`` and ``frequency_penalty`` lie in [-2, 2], as for OpenAI and vLLM."""

RUN_INPUTS: tuple[CogInput, ...] = (
    CogInput(
        PROMPT,
        str,
        None,
        "Text to continue or answer; the output is the generated text, streamed. Give either "
        "this or ops_batch_json.",
    ),
    CogInput(
        "system_prompt",
        str,
        None,
        "System prompt: a system message of the chat template, if any.",
    ),
    CogInput(
        "prompt_template",
        str,
        None,
        "Template for the model's input, with {prompt} and optionally {system_prompt}. Default: "
        "the tokenizer's chat template if the model has one, else the prompt as is. Use {prompt} "
        "alone for a prompt the client already formatted.",
    ),
    CogInput(
        "max_new_tokens",
        int,
        DEFAULT_MAX_NEW_TOKENS,
        "Most tokens to generate (max_length and max_tokens also work).",
        ge=1,
    ),
    CogInput(
        "min_new_tokens",
        int,
        DEFAULT_MIN_NEW_TOKENS,
        "Fewest tokens to generate: end-of-sequence is suppressed until then (-1 or 0: no "
        "minimum).",
        ge=-1,
    ),
    CogInput(
        "temperature",
        float,
        DEFAULT_TEMPERATURE,
        "Sampling temperature; 0 is greedy decoding (deterministic).",
        ge=0.0,
    ),
    # Cog has no exclusive bounds: top_p = 0 and repetition_penalty = 0 are refused in code.
    CogInput(
        "top_p",
        float,
        DEFAULT_TOP_P,
        "Sample from the most likely tokens that together hold this probability.",
        ge=0.0,
        le=1.0,
    ),
    CogInput(
        "top_k",
        int,
        DEFAULT_TOP_K,
        "Sample from the k most likely tokens; 0 keeps them all.",
        ge=0,
    ),
    CogInput(
        "repetition_penalty",
        float,
        DEFAULT_REPETITION_PENALTY,
        "Penalty for tokens already in the prompt or the output, as in transformers; 1 is none.",
        ge=0.0,
    ),
    CogInput(
        "presence_penalty",
        float,
        DEFAULT_PRESENCE_PENALTY,
        "Penalty for every token the output already holds, however often, as in OpenAI and "
        "vLLM; 0 is none.",
        ge=-PENALTY_RANGE,
        le=PENALTY_RANGE,
    ),
    CogInput(
        "frequency_penalty",
        float,
        DEFAULT_FREQUENCY_PENALTY,
        "Penalty growing with how often a token already occurs in the output, as in OpenAI and "
        "vLLM; 0 is none.",
        ge=-PENALTY_RANGE,
        le=PENALTY_RANGE,
    ),
    CogInput(
        "stop_sequences",
        str,
        None,
        "Comma-separated texts that end the generation, e.g. '<end>,<stop>'; not part of the "
        "output.",
    ),
    CogInput(
        "seed",
        int,
        None,
        "Random seed, for reproducible sampling; empty for a random one.",
        ge=0,
    ),
    CogInput(
        "max_length",
        int,
        None,
        "Another name for max_new_tokens, as older or OpenAI-style clients send it.",
        ge=1,
    ),
    CogInput(
        "max_tokens",
        int,
        None,
        "Another name for max_new_tokens, as older or OpenAI-style clients send it.",
        ge=1,
    ),
    CogInput(
        "min_tokens",
        int,
        None,
        "Another name for min_new_tokens, as newer Replicate LLMs send it.",
        ge=-1,
    ),
    CogInput(
        OPS_BATCH_JSON,
        str,
        None,
        "LMTP operations as a JSON string: a list of [COMMAND, ARGS] pairs with COMMAND one of "
        "GENERATE, SCORE, MODEL_INFO, as LMQL's Replicate client sends them.",
    ),
)
"""Every input of ``run()``, in the order the model's page shows them. Text mode reads all but
``ops_batch_json``; LMTP mode reads only that one (Cog still fills in the others' defaults)."""


def input_defaults() -> dict[str, InputValue]:
    """Every input's default, as Cog fills them in for a prediction that gives none."""
    return {spec.name: spec.default for spec in RUN_INPUTS}
