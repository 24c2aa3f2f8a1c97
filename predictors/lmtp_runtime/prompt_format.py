"""From a text request's ``prompt`` and ``system_prompt`` to the token ids the model reads.

Four ways, the first that applies:

1. ``prompt_template`` given: its ``{prompt}`` and ``{system_prompt}`` are replaced (Replicate's
   convention, e.g. ``"[INST] <<SYS>>{system_prompt}<</SYS>> {prompt} [/INST]"``), and the text is
   tokenized with the tokenizer's special tokens (a Llama tokenizer adds its BOS).
   ``"{prompt}"`` alone sends a prompt the client formatted itself, as it is.
2. The prompt is already formatted: it starts with one of the tokenizer's special tokens (its
   BOS, ``<|start_header_id|>``, ``<|im_start|>``...). LiteLLM, for one, applies the Llama 3 chat
   template itself to models named ``meta-llama-3...instruct``; wrapping that in the chat
   template again would nest two conversations. It is tokenized as it is, special tokens and all.
3. The tokenizer has a chat template: it renders ``[system, user]`` messages with the generation
   prompt, and the text is tokenized *without* adding special tokens, because chat templates
   write their own BOS (this is what ``apply_chat_template(tokenize=True)`` does too).
4. Otherwise the plain prompt, after the system prompt and a blank line when there is one.

Only the two placeholders are replaced, in one pass: a template may contain other braces (JSON,
code), and a prompt that itself contains ``{system_prompt}`` stays as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import describe_exception
from .text_request import TextInputError, TextRequest

PLACEHOLDER = re.compile(r"\{(prompt|system_prompt)\}")
PLAIN_WITH_SYSTEM = "{system_prompt}\n\n{prompt}"

Formatting = Literal["prompt_template", "already formatted", "chat_template", "plain"]


@dataclass(frozen=True)
class FormattedPrompt:
    text: str
    token_ids: tuple[int, ...]
    formatting: Formatting
    """Which of the four ways made ``text``; logged with every prediction."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, request: TextRequest) -> FormattedPrompt:
    """The text and token ids of ``request``'s prompt, formatted as the module docstring says.

    Raises:
        TextInputError: the template lacks ``{prompt}``, or has nowhere to put a given system
            prompt; the chat template refuses the messages; or the result has no tokens.
    """
    if request.prompt_template is not None:
        text = fill_template(request.prompt_template, request)
        formatting: Formatting = "prompt_template"
    elif starts_formatted(tokenizer, request.prompt):
        if request.system_prompt is not None:
            raise TextInputError(
                "The prompt is already formatted (it starts with the special token "
                f"{starts_formatted(tokenizer, request.prompt)!r}), so system_prompt has nowhere "
                "to go: put the system message into the prompt, or leave system_prompt empty."
            )
        text, formatting = request.prompt, "already formatted"
    elif has_chat_template(tokenizer):
        text = _render_chat(tokenizer, request)
        formatting = "chat_template"
    else:
        template = "{prompt}" if request.system_prompt is None else PLAIN_WITH_SYSTEM
        text = fill_template(template, request)
        formatting = "plain"
    # A chat template (or a client) writes its own special tokens; adding them again would
    # double the BOS.
    add_special_tokens = formatting not in ("chat_template", "already formatted")
    token_ids = tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    if not token_ids:
        raise TextInputError(
            "The prompt is empty once formatted and tokenized: give a prompt with some text."
        )
    return FormattedPrompt(text=text, token_ids=token_ids, formatting=formatting)


def starts_formatted(tokenizer: Any, prompt: str) -> str | None:
    """The special token ``prompt`` starts with, if any: then a client formatted it already.

    Only tokens the tokenizer marks special count (BOS, chat markers), never ordinary text.
    """
    special = getattr(tokenizer, "all_special_tokens", None) or []
    stripped = prompt.lstrip()
    return next((token for token in special if token and stripped.startswith(token)), None)


def fill_template(template: str, request: TextRequest) -> str:
    """``template`` with ``{prompt}`` and ``{system_prompt}`` replaced, nothing else touched."""
    if "{prompt}" not in template:
        raise TextInputError(
            "prompt_template must contain {prompt}, where the prompt goes, "
            f"got {template[:60]!r}."
        )
    if request.system_prompt is not None and "{system_prompt}" not in template:
        raise TextInputError(
            "system_prompt is given, but prompt_template has no {system_prompt} to put it in: "
            "add one, or leave system_prompt empty."
        )
    values = {"prompt": request.prompt, "system_prompt": request.system_prompt or ""}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _render_chat(tokenizer: Any, request: TextRequest) -> str:
    messages = [{"role": "user", "content": request.prompt}]
    if request.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": request.system_prompt})
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # jinja2's TemplateError, or a template's raise_exception(...)
        raise TextInputError(
            f"The model's chat template cannot format this prompt ({describe_exception(error)}); "
            "give prompt_template to format it yourself."
        ) from error
