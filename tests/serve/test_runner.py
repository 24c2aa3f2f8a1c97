"""The prediction runner's refusals when Cog cannot take a prediction at all."""

from __future__ import annotations

import asyncio

import pytest

from lmtp_cog.serve.cog_client import AsyncCogClient
from lmtp_cog.serve.errors import CogDown, CogUnreachable
from lmtp_cog.serve.prediction import Prediction
from lmtp_cog.serve.runner import PredictionRunner
from tests.support.builds import closed_endpoint


def _prediction() -> Prediction:
    return Prediction(id="p1", model="owner/model", version="v", input={"prompt": "Hi"})


async def _submit(runner: PredictionRunner, cog: AsyncCogClient) -> BaseException:
    await cog.open()
    try:
        with pytest.raises(CogUnreachable) as raised:
            await runner.submit(_prediction())
        return raised.value
    finally:
        await cog.close()


def test_a_cog_server_nobody_listens_on_is_one_sentence_not_an_oserror() -> None:
    cog = AsyncCogClient(closed_endpoint())

    error = asyncio.run(_submit(PredictionRunner(cog), cog))

    assert not isinstance(error, CogDown)
    assert str(error).startswith("the Cog server cannot be reached: "), str(error)
    assert "\n" not in str(error)


def test_after_cog_died_every_prediction_is_refused_with_the_reason() -> None:
    cog = AsyncCogClient(closed_endpoint())
    runner = PredictionRunner(cog)
    runner.fail_all("the Cog worker of m died while serving; see work/_logs/m.cog-1.log.")

    error = asyncio.run(_submit(runner, cog))

    assert isinstance(error, CogDown)
    assert str(error) == "the Cog worker of m died while serving; see work/_logs/m.cog-1.log."
