"""Load the tokenizer and model from the checkpoint directory, as ``model_settings.json`` says.

Everything is read from the local checkpoint directory: the weights are baked into the image
and the container may have no network, so every ``from_pretrained`` runs with
``local_files_only=True`` and inside :func:`~.offline.hub_offline`. The choices that are easy
to get wrong (dtype, quantization, device map) are made by small functions here and logged at
INFO, so a user reading the Cog logs sees what was loaded and why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .checkpoint_kind import encoder_decoder_problem
from .errors import ModelLoadError, UnsupportedModelError, describe_exception
from .offline import hub_offline
from .settings import LoadOptions, ModelSettings, describe_arguments

log = logging.getLogger(__name__)

_INT8_CAST_WARNING = "MatMul8bitLt: inputs will be cast"


@dataclass(frozen=True)
class LoadedModel:
    """The loaded objects plus what was decided while loading them."""

    model: Any
    """A transformers ``PreTrainedModel`` with a causal-LM head, in eval mode."""
    tokenizer: Any
    quantization: str
    dtype: torch.dtype
    """The dtype of the non-quantized weights (and the 4-bit compute dtype)."""
    device: str
    """Where the weights are: ``"cpu"``, ``"cuda:0"``, or several devices joined by commas."""
    prequantized: bool = False
    """The weights were quantized at build time and loaded as saved (``load.prequantized``)."""


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load tokenizer and model from ``settings.checkpoint_dir``.

    Raises:
        UnsupportedModelError: an encoder-decoder or otherwise non-causal checkpoint.
        ModelLoadError: anything else that stops the checkpoint from loading.
    """
    directory = settings.checkpoint_dir
    if not directory.is_dir():
        raise ModelLoadError(
            f"The checkpoint directory {directory} does not exist; "
            "check 'checkpoint_dir' in model_settings.json or rebuild the project."
        )
    options = settings.load
    config = _read_config(directory, options)
    _require_causal_lm(config, directory)
    if options.prequantized:
        _require_saved_quantization(config, directory)

    on_gpu = torch.cuda.is_available()
    dtype = choose_dtype(options, config, on_gpu=on_gpu)
    kwargs = from_pretrained_kwargs(options, dtype, on_gpu=on_gpu)
    log.info(
        "loading %s (%s) from %s: quantization=%s%s, dtype=%s, device_map=%s, "
        "attn_implementation=%s",
        settings.name,
        config.model_type,
        directory,
        options.quantization,
        " (pre-quantized at build time)" if options.prequantized else "",
        _dtype_name(dtype),
        kwargs.get("device_map", "none (cpu)"),
        options.attn_implementation or "default",
    )
    if options.from_pretrained:
        log.info("passed to from_pretrained: %s", describe_arguments(options.from_pretrained))
    if options.quantization == "8bit" and dtype != torch.float16:
        _quiet_int8_cast_warning()

    started = time.monotonic()
    with hub_offline():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
        except Exception as error:
            raise ModelLoadError(
                f"Could not load the model weights from {directory}: {describe_exception(error)}"
            ) from error
        tokenizer = _load_tokenizer(directory, options)
    model.eval()
    device = describe_device(model)
    log.info("loaded %s in %.1f s on %s", type(model).__name__, time.monotonic() - started, device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        quantization=options.quantization,
        dtype=dtype,
        device=device,
        prequantized=options.prequantized,
    )


def choose_dtype(options: LoadOptions, config: Any, *, on_gpu: bool) -> torch.dtype:
    """The configured dtype, else the checkpoint's own, else float16 on a GPU and float32 on CPU."""
    if options.torch_dtype not in (None, "auto"):
        return getattr(torch, options.torch_dtype)
    own = checkpoint_dtype(config)
    if own is not None:
        return own
    return torch.float16 if on_gpu else torch.float32


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The floating dtype ``config.json`` records for the weights, if any."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def from_pretrained_kwargs(
    options: LoadOptions, dtype: torch.dtype, *, on_gpu: bool
) -> dict[str, Any]:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``: only what is set.

    The model's own ``load.from_pretrained`` arguments come first; what the runtime decides
    (dtype, quantization, device map, offline loading) overrides them.
    """
    kwargs: dict[str, Any] = {
        **options.from_pretrained,
        "dtype": dtype,
        "local_files_only": True,
        "trust_remote_code": options.trust_remote_code,
    }
    # A pre-quantized checkpoint's config.json holds the quantization_config it was saved with;
    # transformers reads it from there, and a second one passed here would only conflict.
    quantization = (
        None if options.prequantized else quantization_config(options.quantization, dtype)
    )
    if quantization is not None:
        # transformers 5 refuses a bare load_in_8bit=True keyword: it must be a config object.
        kwargs["quantization_config"] = quantization
    device_map = options.device_map or ("auto" if on_gpu else None)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if options.attn_implementation is not None:
        kwargs["attn_implementation"] = options.attn_implementation
    if options.use_safetensors is not None:
        kwargs["use_safetensors"] = options.use_safetensors
    return kwargs


def quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for ``"8bit"`` (LLM.int8) and ``"4bit"`` (NF4, double quantization)."""
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    return None


def describe_device(model: Any) -> str:
    """``"cpu"``/``"cuda:0"``, or every device of a model that accelerate spread over several."""
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = sorted({_device_name(device) for device in device_map.values()})
    if len(devices) > 1:
        return ",".join(devices)
    return str(model.get_input_embeddings().weight.device)


def _read_config(directory: Path, options: LoadOptions) -> Any:
    try:
        with hub_offline():
            return AutoConfig.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=options.trust_remote_code
            )
    except Exception as error:
        raise ModelLoadError(
            f"Could not read the model configuration {directory / 'config.json'}: "
            f"{describe_exception(error)}"
        ) from error


def _require_causal_lm(config: Any, directory: Path) -> None:
    """LMTP needs next-token logits from a decoder-only model; refuse anything else up front."""
    problem = encoder_decoder_problem(config.to_dict())
    if problem is not None:
        raise UnsupportedModelError(f"The checkpoint in {directory} {problem}.")
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if not remote and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModelError(
            f"The checkpoint in {directory} is a {config.model_type!r} model, which transformers "
            "cannot load as a causal language model (AutoModelForCausalLM); LMTP needs a "
            "decoder-only model."
        )


def _require_saved_quantization(config: Any, directory: Path) -> None:
    """A checkpoint said to be pre-quantized must say how: else it would load unquantized."""
    if getattr(config, "quantization_config", None) is None:
        raise ModelLoadError(
            f"model_settings.json says the checkpoint in {directory} is pre-quantized, but its "
            "config.json has no quantization_config; rebuild the project with ./build "
            "--prequantize (or without it, to quantize at boot)."
        )


def _load_tokenizer(directory: Path, options: LoadOptions) -> Any:
    try:
        return AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=options.trust_remote_code
        )
    except Exception as error:
        raise ModelLoadError(
            f"Could not load the tokenizer from {directory}: {describe_exception(error)}"
        ) from error


def _quiet_int8_cast_warning() -> None:
    """bitsandbytes logs a warning on *every* 8-bit forward whose inputs are not float16.

    At one line per generated token that would drown the Cog logs, so it is said once, here.
    """
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in logger.filters):
        logger.addFilter(_DropInt8CastWarning())
    log.info("8-bit layers cast their inputs to float16 on every forward (bitsandbytes)")


class _DropInt8CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INT8_CAST_WARNING)


def _device_name(device: Any) -> str:
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
