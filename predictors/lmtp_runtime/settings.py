"""``model_settings.json``: the one schema of a model's settings, its one reader and writer.

The builder constructs a :class:`ModelSettings` and writes it with :meth:`ModelSettings.to_json`
next to ``predict.py``; the runtime, ``./serve`` and the ``push`` script read it back with
:func:`read_settings`, and nothing parses the file by hand. The JSON has the dataclasses' shape
(``{"load": {...}, "serve": {...}}``) and the defaults live here only.

Unknown keys are ignored, so a newer builder can add fields without breaking an older runtime;
known keys are checked, because a wrong value would otherwise surface as an obscure failure deep
inside ``from_pretrained``. Stdlib only: the builder and ``push`` import it without torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError

SETTINGS_FORMAT = 1
"""Changes only when a key changes meaning or disappears, so a runtime can refuse a file it does
not understand."""
SETTINGS_FILE = "model_settings.json"
"""The file's name, beside ``predict.py`` in a generated project."""
QUANTIZATIONS = ("none", "8bit", "4bit")
TORCH_DTYPES = ("float16", "bfloat16", "float32", "auto")
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True)
class HubSource:
    """Where the checkpoint came from; reported by MODEL_INFO, never fetched from."""

    repo: str | None = None
    revision: str | None = None
    commit: str | None = None


@dataclass(frozen=True)
class LoadOptions:
    """How to load the checkpoint: the model's ``config.*`` arguments from config.toml."""

    quantization: str = "none"
    """``"none"``, ``"8bit"`` or ``"4bit"``."""
    torch_dtype: str | None = None
    """``None`` or ``"auto"``: the checkpoint's own dtype (see :mod:`.loading`)."""
    trust_remote_code: bool = False
    device_map: str | None = None
    """``None`` means ``"auto"`` on a GPU and everything on the CPU otherwise."""
    attn_implementation: str | None = None
    use_safetensors: bool | None = None
    from_pretrained: Mapping[str, Any] = field(default_factory=dict)
    """``load.from_pretrained``: config.toml's other ``config.*`` keys, passed to
    ``from_pretrained`` as given (the runtime's own choices above take precedence)."""
    prequantized: bool = False
    """``load.prequantized``: the checkpoint holds weights bitsandbytes already quantized
    (``./build --prequantize``), and its config.json carries their ``quantization_config``; they
    are loaded as saved instead of quantized again at every boot."""


@dataclass(frozen=True)
class ServeOptions:
    """How the model is served: ``serve.*``, from config.toml's ``config.*`` serving keys."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Most streams computed in one forward pass."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Most predictions Cog runs at once in one container; their work is batched together
    (:mod:`.scheduler`). ``1``: one prediction at a time. ``predict.py`` declares the same
    number to Cog (``@cog.concurrent(max=N)``)."""
    prefix_cache_mb: int | None = None
    """MiB of KV cache kept across predictions for prompts that share a prefix (LMQL re-sends its
    whole growing prompt on every call); ``0`` turns reuse off. ``None``:
    ``prefix_cache_gpu_share`` of the GPU memory free after loading on CUDA,
    ``prefix_cache.CPU_BUDGET_MB`` on a CPU."""
    prefix_cache_gpu_share: float | None = None
    """That share, in ``(0, 1)``; ``None``: ``prefix_cache.GPU_BUDGET_SHARE``."""
    log_predictions: bool = False
    """Log one INFO line per LMTP prediction. Off by default because LMQL's Replicate client reads
    every log line of a prediction's event stream as an LMTP line (and warns about each);
    text-mode predictions are always logged."""


@dataclass(frozen=True)
class ModelSettings:
    """Everything the runtime knows about the model it serves: the whole file."""

    name: str
    checkpoint_dir: Path
    """As the builder writes it, relative to the file (``checkpoints``); :func:`read_settings`
    makes it absolute."""
    destination: str | None = None
    """``r8.im/ACCOUNT/NAME`` for ``cog push``; ``None`` until config.toml names an account."""
    huggingface: HubSource = field(default_factory=HubSource)
    load: LoadOptions = field(default_factory=LoadOptions)
    serve: ServeOptions = field(default_factory=ServeOptions)
    lmtp_cog_version: str | None = None
    """The builder's version; also what marks ``work/NAME`` as a project the builder made."""
    format: int = SETTINGS_FORMAT

    def to_json(self) -> str:
        """The file's text: stable key order and indentation, so rebuilds diff cleanly."""
        data = asdict(self)
        data["checkpoint_dir"] = self.checkpoint_dir.as_posix()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def read_settings(source: Mapping[str, Any] | str | os.PathLike[str]) -> ModelSettings:
    """Read settings from a ``model_settings.json`` path or from the already-decoded dict.

    A relative ``checkpoint_dir`` resolves against the file's folder, or against the current
    directory when a dict is given.

    Raises:
        SettingsError: the file is missing or not JSON, or a known key has an invalid value.
    """
    if isinstance(source, Mapping):
        return _settings_from_dict(source, base_dir=Path.cwd(), origin="model settings")
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(
            f"{path} does not exist: the builder writes it next to predict.py."
        ) from None
    except (OSError, ValueError) as error:
        raise SettingsError(f"{path} is not readable JSON ({error}).") from None
    if not isinstance(data, Mapping):
        raise SettingsError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return _settings_from_dict(data, base_dir=path.resolve().parent, origin=str(path))


def _settings_from_dict(data: Mapping[str, Any], *, base_dir: Path, origin: str) -> ModelSettings:
    fields = _Fields(data, origin=origin)
    version = fields.get("format", int, default=SETTINGS_FORMAT)
    if version != SETTINGS_FORMAT:
        raise SettingsError(
            f"{origin}: key 'format' is {version}, but this runtime reads format "
            f"{SETTINGS_FORMAT}; "
            "rebuild the project with the matching lmtp-cog."
        )
    checkpoint_dir = Path(fields.get("checkpoint_dir", str, required=True))
    hub = fields.section("huggingface")
    load = fields.section("load")
    serve = fields.section("serve")
    max_batch_size = serve.get("max_batch_size", int, default=DEFAULT_MAX_BATCH_SIZE)
    if max_batch_size < 1:
        raise SettingsError(
            f"{origin}: key 'serve.max_batch_size' must be at least 1, got {max_batch_size}."
        )
    concurrency = serve.get("concurrency", int, default=DEFAULT_CONCURRENCY)
    if concurrency < 1:
        raise SettingsError(
            f"{origin}: key 'serve.concurrency' must be at least 1, got {concurrency}."
        )
    prefix_cache_mb = serve.get("prefix_cache_mb", int)
    if prefix_cache_mb is not None and prefix_cache_mb < 0:
        raise SettingsError(
            f"{origin}: key 'serve.prefix_cache_mb' must be 0 (off) or more, got {prefix_cache_mb}."
        )
    quantization = load.choice("quantization", QUANTIZATIONS, default="none")
    prequantized = load.get("prequantized", bool, default=False)
    if prequantized and quantization == "none":
        raise SettingsError(
            f"{origin}: key 'load.prequantized' is true but 'load.quantization' is none; "
            "rebuild the project, as only 8-bit and 4-bit checkpoints can be pre-quantized."
        )
    gpu_share = serve.get("prefix_cache_gpu_share", (int, float))
    if gpu_share is not None and not 0 < gpu_share < 1:
        raise SettingsError(
            f"{origin}: key 'serve.prefix_cache_gpu_share' must be between 0 and 1, "
            f"got {gpu_share}."
        )
    return ModelSettings(
        name=fields.get("name", str, required=True),
        checkpoint_dir=checkpoint_dir
        if checkpoint_dir.is_absolute()
        else base_dir / checkpoint_dir,
        destination=fields.get("destination", str),
        huggingface=HubSource(
            repo=hub.get("repo", str),
            revision=hub.get("revision", str),
            commit=hub.get("commit", str),
        ),
        load=LoadOptions(
            quantization=quantization,
            torch_dtype=load.choice("torch_dtype", TORCH_DTYPES, default=None),
            trust_remote_code=load.get("trust_remote_code", bool, default=False),
            device_map=load.get("device_map", str),
            attn_implementation=load.get("attn_implementation", str),
            use_safetensors=load.get("use_safetensors", bool),
            from_pretrained=dict(load.get("from_pretrained", dict, default={})),
            prequantized=prequantized,
        ),
        serve=ServeOptions(
            max_batch_size=max_batch_size,
            concurrency=concurrency,
            prefix_cache_mb=prefix_cache_mb,
            prefix_cache_gpu_share=None if gpu_share is None else float(gpu_share),
            log_predictions=serve.get("log_predictions", bool, default=False),
        ),
        lmtp_cog_version=fields.get("lmtp_cog_version", str),
        format=version,
    )


def describe_arguments(arguments: Mapping[str, Any]) -> str:
    """``low_cpu_mem_usage=true, max_memory={"0": "20GiB"}``: the arguments as JSON values."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in arguments.items())


class _Fields:
    """Typed access to one JSON object of the settings, with errors naming the dotted key."""

    def __init__(self, data: Mapping[str, Any], *, origin: str, prefix: str = "") -> None:
        self._data = data
        self._origin = origin
        self._prefix = prefix

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = None,
        required: bool = False,
    ) -> Any:
        value = self._data.get(key)
        if value is None:
            if required:
                raise SettingsError(f"{self._origin}: key '{self._prefix}{key}' is missing.")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a settings file saying `"max_batch_size": true` is a mistake.
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            names = " or ".join(k.__name__ for k in kinds)
            raise SettingsError(
                f"{self._origin}: key '{self._prefix}{key}' must be {names}, "
                f"got {json.dumps(value)}."
            )
        return value

    def choice(self, key: str, choices: tuple[str, ...], *, default: str | None) -> str | None:
        value = self.get(key, str, default=default)
        if value is not None and value not in choices:
            raise SettingsError(
                f"{self._origin}: key '{self._prefix}{key}' must be one of "
                f"{', '.join(choices)}, got {value!r}."
            )
        return value

    def section(self, key: str) -> _Fields:
        return _Fields(
            self.get(key, dict, default={}), origin=self._origin, prefix=f"{self._prefix}{key}."
        )
