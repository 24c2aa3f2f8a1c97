"""Fixtures of the LMTP conformance suite: the runtime as a black box beside a reference.

Every test module here gets the same harnesses (a loaded predictor plus a plain-transformers
reference on the same checkpoint; :mod:`tests.support.lmtp_reference`), made once per session,
and runs torch single-threaded: a 2-layer model is too small to gain from intra-op threads, and
on a busy 2-core machine they make every forward pass many times slower. The setting applies to
this folder only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.lmtp_reference import (
    Harness,
    MakeHarness,
    Reference,
    one_torch_thread,
    settings,
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    yield from one_torch_thread()


@pytest.fixture(scope="session")
def harness(make_checkpoint: Callable[..., Path]) -> MakeHarness:
    """``harness(max_batch_size=8, **make_model_args)``: a predictor and the reference for the
    checkpoint ``make_model(**make_model_args)`` makes, each made once per session."""
    from lmtp_runtime.predictor import LmtpPredictor

    references: dict[Path, Reference] = {}
    predictors: dict[tuple[Path, int], Any] = {}

    def get(*, max_batch_size: int = 8, **make_model_args: Any) -> Harness:
        directory = make_checkpoint(**make_model_args)
        if directory not in references:
            references[directory] = Reference(directory)
        if (directory, max_batch_size) not in predictors:
            predictors[directory, max_batch_size] = LmtpPredictor.from_settings(
                settings(directory, max_batch_size=max_batch_size)
            )
        return Harness(predictors[directory, max_batch_size], references[directory], directory)

    return get


@pytest.fixture(scope="module")
def llama(harness: MakeHarness) -> Harness:
    return harness(arch="llama")


@pytest.fixture(scope="module")
def gpt2(harness: MakeHarness) -> Harness:
    return harness(arch="gpt2")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest, harness: MakeHarness) -> Harness:
    """Each test once per architecture: Llama (rotary, RMSNorm) and GPT-2 (learned positions)."""
    return harness(arch=request.param)
