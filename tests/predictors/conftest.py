"""Fixtures for the predictor runtime's own tests: tiny checkpoints and loaded predictors.

Checkpoints and predictors are made once per session and shared; a test that changes a model
(hooks, weights) must load its own with ``fresh=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmtp_cog.model_settings import local_model_settings
from tests.support.lmtp_reference import FAKE_COMMIT


def settings_dict(
    checkpoint_dir: Path,
    *,
    quantization: str = "none",
    max_batch_size: int = 8,
    concurrency: int = 8,
    log_predictions: bool = False,
    **load: Any,
) -> dict[str, Any]:
    """``model_settings.json`` as the builder writes it, for a local checkpoint."""
    return local_model_settings(
        checkpoint_dir,
        revision="main",
        commit=FAKE_COMMIT,
        quantization=quantization,
        max_batch_size=max_batch_size,
        concurrency=concurrency,
        log_predictions=log_predictions,
        **load,
    )


@pytest.fixture(scope="session")
def llama_dir(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint(arch="llama")


@pytest.fixture(scope="session")
def gpt2_dir(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint(arch="gpt2")


@pytest.fixture(scope="session")
def load_predictor() -> Callable[..., Any]:
    """``load_predictor(checkpoint_dir, fresh=False, **settings)``: a ready ``LmtpPredictor``.

    Shared per (checkpoint, settings) unless ``fresh``: then the caller may modify its model.
    """
    from lmtp_runtime.predictor import LmtpPredictor

    loaded: dict[str, Any] = {}

    def load(checkpoint_dir: Path, *, fresh: bool = False, **settings: Any) -> Any:
        data = settings_dict(checkpoint_dir, **settings)
        if fresh:
            return LmtpPredictor.from_settings(data)
        key = json.dumps(data, sort_keys=True)
        if key not in loaded:
            loaded[key] = LmtpPredictor.from_settings(data)
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., dict[str, Any]]:
    """``make_settings(checkpoint_dir, **overrides)``: see :func:`settings_dict`."""
    return settings_dict
