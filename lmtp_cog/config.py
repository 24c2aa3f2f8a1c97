"""The data model of config.toml, and its loading and validation.

This module defines what the rest of the builder consumes. Everything downstream reads these
frozen dataclasses, never the raw TOML.

:func:`load_config` checks the whole file before anything is fetched or written, and reports
every problem at once (one :class:`~lmtp_cog.errors.ConfigErrors`), each naming the file, the
model and the key, so a user fixes the file in one pass rather than one error per build.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtp_runtime.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BATCH_SIZE,
    TORCH_DTYPES,
)

from lmtp_cog import paths
from lmtp_cog.errors import ConfigError, ConfigErrors, ConfigNotFoundError
from lmtp_cog.names import (
    hub_repo_id_problem,
    model_name_problem,
    replicate_owner_problem,
)

PLACEHOLDER_DEST_PREFIX = "r8.im/YOURACCOUNT/"
"""What config.toml.example ships with: accepted, and means "no account yet, don't push"."""

REGISTRY = "r8.im"
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
"""The Python versions the predictor runtime supports in the Cog image."""
COG_SDK_VERSION = "0.23.1"
"""The Cog SDK every image gets unless ``cog.sdk_version`` says otherwise: the release the
runtime is tested with (``make venv`` installs the same, through ``lmtp-cog[serve]``)."""
TORCH_WHEEL_CUDA = "13.0"
"""The CUDA that PyPI's wheel of the pinned torch (``predictors/requirements.txt``) is built for:
torch 2.13.0 requires ``cuda-toolkit==13.0.*``. cog's torch-to-CUDA table ends before torch 2.13,
so cog.yaml must name it (``build.cuda``); a test fails when the torch pin moves without it."""
MAX_BATCH_SIZE = 1024
MAX_CONCURRENCY = 128
"""Each concurrent prediction holds a Cog slot and a thread; Replicate runs far fewer."""
MAX_PREFIX_CACHE_MB = 1024 * 1024
MIN_PYTHON_FOR_CONCURRENCY = "3.11"
"""``cog build`` refuses concurrency above 1 on older Pythons (cog 0.22 ``pkg/config``)."""
LOCAL_REPO_PREFIXES = ("/", "./", "../", "~")
"""How ``huggingface.repo`` says "a directory on this machine" rather than a Hub id."""


@dataclass(frozen=True)
class HuggingFaceSource:
    """Where a model's files come from: ``[models.NAME] huggingface.*``."""

    repo: str
    """A Hub id ``owner/name``, or a local directory exactly as written in config.toml."""
    revision: str | None = None
    """``huggingface.version``: a branch, tag or commit; ``None`` means the default branch."""
    local_dir: Path | None = None
    """The absolute directory when ``repo`` names a local directory, else ``None``."""

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None


@dataclass(frozen=True)
class ModelArgs:
    """``[models.NAME] config.*``: how the predictor loads and serves the model."""

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    torch_dtype: str | None = None
    """``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"auto"``; ``None``: checkpoint's own."""
    use_safetensors: bool | None = None
    """``False`` fetches ``.bin`` weights even when safetensors exist; ``None``: prefer safetensors."""
    trust_remote_code: bool = False
    device_map: str | None = None
    """Passed to ``from_pretrained``; ``None`` means ``"auto"`` on GPU."""
    attn_implementation: str | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Most LMTP streams computed in one forward pass."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Most predictions one container runs at once; their work shares forward passes."""
    prefix_cache_mb: int | None = None
    """MiB of KV cache kept across predictions for prompts sharing a prefix; 0 turns reuse off.
    ``None``: a quarter of the GPU memory free after loading (1 GiB on a CPU)."""
    log_predictions: bool = False
    """Log one line per LMTP prediction. Off by default: LMQL's Replicate client reads a
    prediction's log events as protocol lines and warns about each."""
    from_pretrained: tuple[tuple[str, Any], ...] = ()
    """Every other ``config.*`` key, in file order: passed to ``from_pretrained`` as given
    (LMQL's docs: the config section holds "any values you want to pass in the model_args
    dictionary"), e.g. ``low_cpu_mem_usage = true`` or ``max_memory = {...}``."""

    @property
    def quantization(self) -> str:
        """``"8bit"``, ``"4bit"`` or ``"none"``."""
        if self.load_in_8bit:
            return "8bit"
        if self.load_in_4bit:
            return "4bit"
        return "none"


@dataclass(frozen=True)
class CogOptions:
    """``[models.NAME] cog.*``: overrides for the generated cog.yaml."""

    gpu: bool = True
    cuda: str | None = None
    """``cog.cuda`` as written; ``None``: the CUDA of the pinned torch (see :attr:`image_cuda`)."""
    python_version: str = "3.11"
    sdk_version: str = COG_SDK_VERSION
    """The Cog SDK (and so coglet) installed in the image; the runtime is tested with the
    default, whose serving behaviour it relies on (streaming with concurrency)."""
    extra_requirements: tuple[str, ...] = ()
    """Extra pinned pip requirements (``name==version``), appended to requirements.txt."""
    system_packages: tuple[str, ...] = ()

    @property
    def image_cuda(self) -> str | None:
        """cog.yaml's ``build.cuda``: ``cog.cuda``, else the pinned torch wheel's; none on CPU."""
        if not self.gpu:
            return None
        return self.cuda or TORCH_WHEEL_CUDA


@dataclass(frozen=True)
class ModelSpec:
    """One ``[models.NAME]`` table, validated."""

    name: str
    source: HuggingFaceSource
    args: ModelArgs = field(default_factory=ModelArgs)
    cog: CogOptions = field(default_factory=CogOptions)


@dataclass(frozen=True)
class ProjectConfig:
    """A whole config.toml, validated."""

    path: Path
    """The absolute path of the config file (relative local repos resolve against its folder)."""
    dest_prefix: str | None
    """``r8.im/ACCOUNT/`` with the trailing slash; ``None`` while still the placeholder."""
    models: tuple[ModelSpec, ...]

    def destination(self, model: ModelSpec) -> str | None:
        """``r8.im/ACCOUNT/NAME`` for ``cog push``, or ``None`` when no account is set yet."""
        if self.dest_prefix is None:
            return None
        return f"{self.dest_prefix}{model.name}"

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


# --- loading --------------------------------------------------------------------------------------


def load_config(path: Path) -> ProjectConfig:
    """Read config.toml and validate all of it.

    Args:
        path: The config file. Local model directories written as relative paths resolve
            against its folder, not the current directory.

    Returns:
        The validated configuration, with absolute paths.

    Raises:
        ConfigNotFoundError: The file does not exist.
        ConfigError: The file cannot be read or is not valid TOML.
        ConfigErrors: Keys are missing, unknown or invalid; ``.errors`` lists every one.
    """
    document = _parse(path)
    problems = _Problems(path)
    for key in document:
        if key not in _TOP_LEVEL_KEYS:
            problems.add(_unknown_key(key, _TOP_LEVEL_KEYS), key=key)
    dest_prefix = _read_dest_prefix(document, problems)
    absolute = path.resolve()
    models = _read_models(document.get("models"), problems, base_dir=absolute.parent)
    if problems.errors:
        raise ConfigErrors(problems.errors)
    return ProjectConfig(path=absolute, dest_prefix=dest_prefix, models=models)


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigNotFoundError(
            "file not found; create it from the example with "
            "`cp config.toml.example config.toml`, then edit it",
            path=path,
        ) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text; save it as UTF-8", path=path) from None
    except OSError as error:
        raise ConfigError(f"cannot be read ({error.strerror})", path=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message carries the position: "Invalid value (at line 4, column 23)".
        raise ConfigError(f"invalid TOML: {error}; fix the syntax there", path=path) from None


class _Problems:
    """Every problem found in one config file, each located by model and key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[ConfigError] = []

    def add(self, message: str, *, model: str | None = None, key: str | None = None) -> None:
        self.errors.append(ConfigError(message, path=self.path, model=model, key=key))


class _Invalid(Exception):
    """A value cannot be used; one message per reason (a list can have several bad items)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = messages


_Reader = Callable[[Any], Any]
"""Turns a raw TOML value into the dataclass field's value, or raises :class:`_Invalid`."""


# --- readers for single values ---


def _describe(value: object) -> str:
    """A TOML value as a user would name it in their file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"the date/time {value}"


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string in quotes, got {_describe(value)}")
    if not value.strip():
        raise _Invalid("expected a non-empty string; remove the key to use the default")
    return value


def _integer_in(low: int, high: int, *, why: str) -> _Reader:
    """A whole number from ``low`` to ``high``; ``why`` says where the upper bound comes from."""

    def read(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise _Invalid(f"expected a whole number of at least {low}, got {_describe(value)}")
        if value > high:
            raise _Invalid(f"expected at most {high} ({why}), got {_describe(value)}")
        return value

    return read


def _one_of(choices: Sequence[str]) -> _Reader:
    listed = ", ".join(repr(choice) for choice in choices)

    def read(value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"expected one of {listed} in quotes, got {_describe(value)}")
        if value not in choices:
            message = f"expected one of {listed}, got {_describe(value)}"
            raise _Invalid(message + did_you_mean(value, choices))
        return value

    return read


def _matching(pattern: str, *, expected: str) -> _Reader:
    compiled = re.compile(pattern, re.ASCII)  # \d is 0-9 only, not every script's digits

    def read(value: object) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise _Invalid(f"expected {expected}, got {_describe(value)}")
        return value

    return read


def _list_of(item: _Reader) -> _Reader:
    """Reads a list into a tuple, reporting every bad item rather than the first."""

    def read(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list like [\"...\"], got {_describe(value)}")
        items, messages = [], []
        for element in value:
            try:
                items.append(item(element))
            except _Invalid as invalid:
                messages.extend(invalid.messages)
        if messages:
            raise _Invalid(*messages)
        return tuple(items)

    return read


# A requirements.txt line pinned to one release from PyPI: name, optional extras, `==`, version.
# Spaces but no newlines, so an item can never add a second line (say `--index-url`).
_PINNED_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"  # name (PEP 508)
    r"(?:\[[A-Za-z0-9._, -]*\])?"  # extras
    r" *== *[A-Za-z0-9][A-Za-z0-9.+!_-]*"  # an exact version, no wildcard
)


def _pinned_requirement(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected requirements as strings like 'name==1.0', got {_describe(value)}")
    if "://" in value or "@" in value or value.startswith(("git+", "-")):
        raise _Invalid(
            f"{value!r} is a URL, git or pip-option requirement; "
            "pin a release from PyPI instead, as name==version"
        )
    if not _PINNED_REQUIREMENT.fullmatch(value):
        raise _Invalid(
            f"{value!r} is not pinned; write it as name==version, "
            "for example 'sentencepiece==0.2.0'"
        )
    return value


# Debian policy: lowercase letters, digits, '+', '-' and '.', starting with a letter or digit,
# at least two characters.
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def _apt_package(value: object) -> str:
    if not isinstance(value, str) or not _APT_PACKAGE.fullmatch(value):
        raise _Invalid(
            f"{value!r} is not an apt package name: use lowercase letters, digits, '+', '-' "
            "and '.', starting with a letter or digit (for example 'ffmpeg')"
        )
    return value


# --- what each table may hold ---


@dataclass(frozen=True)
class _Key:
    """One key of a ``[models.NAME]`` section: the dataclass field it sets, and its reader."""

    field: str
    read: _Reader


_SOURCE_KEYS: Mapping[str, _Key] = {
    "repo": _Key("repo", _text),
    "version": _Key("revision", _text),
}
_MODEL_ARGS_KEYS: Mapping[str, _Key] = {
    "load_in_8bit": _Key("load_in_8bit", _boolean),
    "load_in_4bit": _Key("load_in_4bit", _boolean),
    "torch_dtype": _Key("torch_dtype", _one_of(TORCH_DTYPES)),
    # transformers 5 renamed from_pretrained's torch_dtype to dtype; accept both spellings.
    "dtype": _Key("torch_dtype", _one_of(TORCH_DTYPES)),
    "use_safetensors": _Key("use_safetensors", _boolean),
    "trust_remote_code": _Key("trust_remote_code", _boolean),
    "device_map": _Key("device_map", _text),
    "attn_implementation": _Key("attn_implementation", _text),
    "max_batch_size": _Key(
        "max_batch_size",
        _integer_in(1, MAX_BATCH_SIZE, why="rows of one forward pass; far beyond any GPU's use"),
    ),
    "concurrency": _Key(
        "concurrency",
        _integer_in(1, MAX_CONCURRENCY, why="predictions one container runs at once"),
    ),
    "prefix_cache_mb": _Key(
        "prefix_cache_mb",
        _integer_in(0, MAX_PREFIX_CACHE_MB, why="MiB, 1 TiB; more memory than any host has"),
    ),
    "log_predictions": _Key("log_predictions", _boolean),
}
_COG_KEYS: Mapping[str, _Key] = {
    "gpu": _Key("gpu", _boolean),
    "cuda": _Key(
        "cuda", _matching(r"\d+\.\d+(?:\.\d+)?", expected='a CUDA version in quotes like "12.4"')
    ),
    "python_version": _Key("python_version", _one_of(PYTHON_VERSIONS)),
    "sdk_version": _Key(
        "sdk_version",
        _matching(
            r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?", expected='a Cog version in quotes like "0.23.1"'
        ),
    ),
    "extra_requirements": _Key("extra_requirements", _list_of(_pinned_requirement)),
    "system_packages": _Key("system_packages", _list_of(_apt_package)),
}
_SECTIONS: Mapping[str, Mapping[str, _Key]] = {
    "huggingface": _SOURCE_KEYS,
    "config": _MODEL_ARGS_KEYS,
    "cog": _COG_KEYS,
}
_TOP_LEVEL_KEYS = ("dest_prefix", "models")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
RESERVED_MODEL_ARGUMENTS: Mapping[str, str] = {
    "pretrained_model_name_or_path": "the runtime loads the checkpoint in the image; remove it",
    "local_files_only": "the runtime always loads from the image's files alone; remove it",
    "quantization_config": "set config.load_in_8bit or config.load_in_4bit instead",
    "load_in_8bit_fp32_cpu_offload": "not supported; remove it",
    "cache_dir": "the runtime loads from the image's checkpoints/ folder; remove it",
    "revision": "pin the revision with huggingface.version instead",
    "token": "tokens are never written into the image; remove it",
    "use_auth_token": "tokens are never written into the image; remove it",
    "force_download": "the runtime never downloads; remove it",
}
"""``from_pretrained`` arguments the runtime sets itself, and what to write instead."""


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known``, or ``""`` when none is close."""
    matches = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _unknown_key(key: str, known: Sequence[str]) -> str:
    hint = did_you_mean(key, known)
    return "unknown key" + (hint or f"; the keys allowed here are {', '.join(known)}")


# --- the file, table by table ---


def _read_dest_prefix(document: Mapping[str, Any], problems: _Problems) -> str | None:
    shape = f'"{REGISTRY}/ACCOUNT/" with your Replicate account name as ACCOUNT'
    if "dest_prefix" not in document:
        problems.add(f"missing; add dest_prefix = {shape} at the top", key="dest_prefix")
        return None
    value = document["dest_prefix"]
    if not isinstance(value, str):
        problems.add(f"expected {shape}, got {_describe(value)}", key="dest_prefix")
        return None
    prefix = value if value.endswith("/") else value + "/"
    if prefix == PLACEHOLDER_DEST_PREFIX:
        return None
    registry, _, owner = prefix.removesuffix("/").partition("/")
    if registry != REGISTRY or not owner or "/" in owner:
        problems.add(
            f"expected {shape} (the build appends each model name), got {_describe(value)}",
            key="dest_prefix",
        )
        return None
    if problem := replicate_owner_problem(owner):
        problems.add(problem, key="dest_prefix")
        return None
    return prefix


def _read_models(
    table: object, problems: _Problems, *, base_dir: Path
) -> tuple[ModelSpec, ...]:
    if table is not None and not isinstance(table, dict):
        problems.add(f"expected [models.NAME] tables, got {_describe(table)}", key="models")
        return ()
    if not table:
        problems.add(
            "no models to build; add a table per model, for example [models.llama-2-7b-hf] "
            'with huggingface.repo = "meta-llama/Llama-2-7b-hf"',
            key="models",
        )
        return ()
    # Read every model even after a bad one, so that all their problems are reported.
    models = [_read_model(name, body, problems, base_dir=base_dir) for name, body in table.items()]
    return tuple(model for model in models if model is not None)


def _read_model(
    name: str, table: object, problems: _Problems, *, base_dir: Path
) -> ModelSpec | None:
    """One ``[models.NAME]`` table; ``None`` when it has problems (all of them reported)."""
    reported_before = len(problems.errors)
    if problem := model_name_problem(name):
        problems.add(problem, model=name)
    if not isinstance(table, dict):
        problems.add(
            f"expected a table [models.{name}] holding huggingface.repo, got {_describe(table)}",
            model=name,
        )
        return None
    for key, value in table.items():
        # [models.mistral-7b-v0.1] is the table "1" inside the model "mistral-7b-v0".
        if key not in _SECTIONS and isinstance(value, dict) and value.keys() & _SECTIONS.keys():
            problems.add(
                f"a '.' in a model name splits the TOML key; quote the name: "
                f'[models."{name}.{key}"]',
                model=f"{name}.{key}",
            )
            return None

    for key in table:
        if key not in _SECTIONS:
            problems.add(_unknown_model_key(key), model=name, key=key)
    source = _read_source(table, problems, model=name, base_dir=base_dir)
    args = ModelArgs(**_read_section(table, "config", problems, model=name))
    cog = CogOptions(**_read_section(table, "cog", problems, model=name))

    if args.load_in_8bit and args.load_in_4bit:
        problems.add(
            "config.load_in_8bit and config.load_in_4bit are both true; keep only one",
            model=name,
            key="config.load_in_4bit",
        )
    if cog.cuda is not None and not cog.gpu:
        problems.add(
            "a CUDA version means nothing with cog.gpu = false; remove one of them",
            model=name,
            key="cog.cuda",
        )
    if args.concurrency > 1 and _python_before(cog.python_version, MIN_PYTHON_FOR_CONCURRENCY):
        problems.add(
            f"cog build refuses concurrency above 1 on Python {cog.python_version}; set "
            f'cog.python_version = "{MIN_PYTHON_FOR_CONCURRENCY}" or newer, or '
            "config.concurrency = 1",
            model=name,
            key="cog.python_version",
        )

    # A source is missing only with a problem reported; the test is for the type checker.
    if len(problems.errors) > reported_before or source is None:
        return None
    return ModelSpec(name=name, source=source, args=args, cog=cog)


def _python_before(version: str, other: str) -> bool:
    return tuple(map(int, version.split("."))) < tuple(map(int, other.split(".")))


def _unknown_model_key(key: str) -> str:
    # A key of a section written without it (`load_in_8bit = true`) is the likeliest slip.
    for section, keys in _SECTIONS.items():
        if key in keys:
            return f"unknown key; did you mean '{section}.{key}'?"
    return _unknown_key(key, tuple(_SECTIONS))


def _read_section(
    model_table: Mapping[str, Any], section: str, problems: _Problems, *, model: str
) -> dict[str, Any]:
    """The dataclass fields set by ``section.*`` keys; bad keys are reported and left out."""
    table = model_table.get(section, {})
    keys = _SECTIONS[section]
    if not isinstance(table, dict):
        example = f"{section}.{next(iter(keys))} = ..."
        problems.add(
            f"expected a table of keys like {example}, got {_describe(table)}",
            model=model,
            key=section,
        )
        return {}
    fields: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    passed: list[tuple[str, Any]] = []
    for key, value in table.items():
        dotted = f"{section}.{key}"
        spec = keys.get(key)
        if spec is None and section == "config":
            try:
                passed.append((key, _model_argument(key, value, known=tuple(keys))))
            except _Invalid as invalid:
                for message in invalid.messages:
                    problems.add(message, model=model, key=dotted)
            continue
        if spec is None:
            problems.add(_unknown_key(key, tuple(keys)), model=model, key=dotted)
            continue
        if spec.field in set_by:
            problems.add(
                f"sets the same option as '{section}.{set_by[spec.field]}'; keep only one",
                model=model,
                key=dotted,
            )
            continue
        set_by[spec.field] = key
        try:
            fields[spec.field] = spec.read(value)
        except _Invalid as invalid:
            for message in invalid.messages:
                problems.add(message, model=model, key=dotted)
    if passed:
        fields["from_pretrained"] = tuple(passed)
    return fields


def _model_argument(key: str, value: object, *, known: Sequence[str]) -> Any:
    """A ``config.*`` key lmtp-cog does not know, checked to go to ``from_pretrained`` as given.

    A key a typo away from a known one is a typo, not an argument; keys the runtime sets itself
    cannot be overridden; the value must be one JSON can carry into model_settings.json.
    """
    near = [name for name in known if _edit_distance(key, name) <= (2 if len(name) > 5 else 1)]
    if near:
        raise _Invalid(f"unknown key; did you mean {near[0]!r}?")
    if key in RESERVED_MODEL_ARGUMENTS:
        raise _Invalid(RESERVED_MODEL_ARGUMENTS[key])
    if not _IDENTIFIER.fullmatch(key):
        raise _Invalid(
            "not a from_pretrained argument name; model arguments are Python identifiers like "
            "low_cpu_mem_usage"
        )
    return _json_value(value)


def _json_value(value: object) -> Any:
    """``value`` as a JSON-ready value: TOML's dates and times, and non-finite floats, are not."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"{_describe(value)} cannot be written to model_settings.json (JSON)")
        return value
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(name): _json_value(item) for name, item in value.items()}
    raise _Invalid(
        f"{_describe(value)} cannot be passed to from_pretrained: use a string, number, "
        "boolean, list or table"
    )


def _edit_distance(left: str, right: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions."""
    previous = list(range(len(right) + 1))
    for i, a in enumerate(left, 1):
        current = [i]
        for j, b in enumerate(right, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def _read_source(
    model_table: Mapping[str, Any], problems: _Problems, *, model: str, base_dir: Path
) -> HuggingFaceSource | None:
    fields = _read_section(model_table, "huggingface", problems, model=model)
    section = model_table.get("huggingface", {})
    if "repo" not in fields:
        if isinstance(section, dict) and "repo" not in section:
            problems.add(
                'missing; add huggingface.repo = "owner/name" (a Hub id) '
                'or a local directory like "./my-model"',
                model=model,
                key="huggingface.repo",
            )
        return None

    repo: str = fields["repo"]
    try:
        local_dir = _locate_repo(repo, base_dir=base_dir)
    except _Invalid as invalid:
        problems.add(invalid.messages[0], model=model, key="huggingface.repo")
        return None
    if local_dir is not None and "revision" in fields:
        problems.add(
            "a local directory has no versions; remove huggingface.version",
            model=model,
            key="huggingface.version",
        )
        return None
    return HuggingFaceSource(repo=repo, revision=fields.get("revision"), local_dir=local_dir)


def _locate_repo(repo: str, *, base_dir: Path) -> Path | None:
    """The absolute directory ``repo`` names, or ``None`` when it is a valid Hub id."""
    if not repo.startswith(LOCAL_REPO_PREFIXES):
        if problem := hub_repo_id_problem(repo):
            raise _Invalid(problem)
        return None
    try:
        directory = (base_dir / Path(repo).expanduser()).resolve()
    except RuntimeError:  # `~user` for a user this machine does not know
        raise _Invalid(f"cannot expand the home folder in {repo!r}; write the full path") from None
    if not directory.is_dir():
        if directory.parent.parent == paths.EXAMPLES_DIR:
            raise _Invalid(
                f"the example checkpoint {str(directory)!r} is not made yet; run `make example` "
                "(or `make demo`) once, which makes it offline in a few seconds"
            )
        raise _Invalid(
            f"the local directory {str(directory)!r} does not exist; fix the path "
            "(a relative path starts from the folder holding this config file)"
        )
    return directory
