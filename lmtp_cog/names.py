"""The naming rules a model must pass before the builder uses a name anywhere.

A model name becomes a folder (``work/NAME``) and the last part of a Docker image reference
(``r8.im/ACCOUNT/NAME``); a Hub id becomes part of URLs and cache paths. Checking them here, as
plain strings, means nothing later can escape ``work/`` or produce a reference ``cog push``
rejects. Each function returns ``None`` for a good name, or the problem as a phrase that names the
value and the rule, for the caller to place (config.toml key, command-line option).
"""

from __future__ import annotations

import re

MODEL_NAME_MAX_LENGTH = 100
"""Replicate's limit on a model name."""

HUB_NAME_PART_MAX_LENGTH = 96
"""The Hub's limit on each of ``owner`` and ``name`` in ``owner/name``."""

# Replicate allows lowercase letters, digits, '-', '_' and '.', starting and ending with a letter
# or digit. The name is also a path component of an image reference, whose grammar (Docker's
# distribution/reference) allows only '.', '_', '__' or a run of '-' between alphanumerics: so no
# '..', which also keeps the name from ever meaning "the parent folder".
_MODEL_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")

# Account names on Replicate: lowercase letters, digits, '-' and '_', under the same
# image-reference grammar.
_OWNER = re.compile(r"[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*")

# The Hub's rules (huggingface_hub.utils.validate_repo_id), restricted to ASCII as the Hub is.
_HUB_PART_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name (Replicate's rules), or ``None`` if it can."""
    if _MODEL_NAME.fullmatch(name) and len(name) <= MODEL_NAME_MAX_LENGTH:
        return None
    problem = (
        f"{name!r} is not a valid Replicate model name: use lowercase letters and digits, "
        "separated by '-', '_' or '.' (no '..' and no '/'), starting and ending with a letter "
        f"or digit, at most {MODEL_NAME_MAX_LENGTH} characters"
    )
    suggestion = _slug(name, keep="._-")[:MODEL_NAME_MAX_LENGTH].strip("._-")
    if suggestion and _MODEL_NAME.fullmatch(suggestion):
        problem += f" (for example {suggestion!r})"
    return problem


def replicate_owner_problem(owner: str) -> str | None:
    """Why ``owner`` cannot be a Replicate account name, or ``None`` if it can."""
    if _OWNER.fullmatch(owner):
        return None
    problem = (
        f"{owner!r} is not a valid Replicate account name: use lowercase letters and digits, "
        "separated by '-' or '_', starting and ending with a letter or digit"
    )
    suggestion = _slug(owner, keep="_-").strip("_-")
    if suggestion and _OWNER.fullmatch(suggestion):
        problem += f" (for example {suggestion!r})"
    return problem


def hub_repo_id_problem(repo: str) -> str | None:
    """Why ``repo`` is not a Hugging Face Hub id ``owner/name``, or ``None`` if it is one.

    The rules are the Hub's own (those of ``huggingface_hub.utils.validate_repo_id``), except that
    the legacy owner-less ids (``gpt2``) are refused: the Hub redirects them to an ``owner/name``,
    and a bare word is more often a local folder written without ``./``.
    """
    reason = _hub_repo_id_reason(repo)
    if reason is None:
        return None
    return (
        f"{repo!r} is not a valid Hugging Face Hub id: {reason}; "
        "a local directory must start with '/', './', '../' or '~'"
    )


def _hub_repo_id_reason(repo: str) -> str | None:
    parts = repo.split("/")
    if len(parts) != 2:
        return "expected 'owner/name', for example 'meta-llama/Llama-2-7b-hf'"
    for part in parts:
        if not 1 <= len(part) <= HUB_NAME_PART_MAX_LENGTH:
            return f"owner and name must each be 1 to {HUB_NAME_PART_MAX_LENGTH} characters long"
        if not _HUB_PART_CHARS.fullmatch(part):
            return "owner and name may use only ASCII letters, digits, '-', '_' and '.'"
        if part[0] in "-." or part[-1] in "-.":
            return "owner and name may not start or end with '-' or '.'"
    if "--" in repo or ".." in repo:
        return "'--' and '..' are not allowed"
    if repo.endswith(".git"):
        return "it may not end with '.git'"
    return None


def _slug(text: str, *, keep: str) -> str:
    """``text`` in lowercase with every run of other characters turned into one '-'."""
    allowed = re.escape(keep)
    slug = re.sub(rf"[^a-z0-9{allowed}]+", "-", text.lower())
    return re.sub(r"\.{2,}", ".", slug)
