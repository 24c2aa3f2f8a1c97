"""A prediction's state and stream, as the API shows them, on plain data (no servers)."""

from __future__ import annotations

import asyncio
import json

import pytest

from lmtp_cog.serve.prediction import Prediction


def _prediction() -> Prediction:
    return Prediction(id="p1", model="someone/m", version="v1", input={"ops_batch_json": "[]"})


async def _follow(prediction: Prediction, after: int = -1) -> list[tuple[str, str, str | None]]:
    followed = prediction.follow(after=after, stop=asyncio.Event())
    return [(e.name, e.data, e.id) async for e in followed if e is not None]


def _events(prediction: Prediction, after: int = -1) -> list[tuple[str, str, str | None]]:
    return asyncio.run(_follow(prediction, after))


def test_a_succeeded_prediction_streams_its_outputs_logs_and_done_last() -> None:
    prediction = _prediction()
    prediction.mark_processing()
    prediction.add_logs("loading\n")
    prediction.add_output("TOKEN {}\n")
    prediction.add_output("MSG {}\n")
    prediction.finish("succeeded", metrics={"predict_time": 0.5})

    assert _events(prediction) == [
        ("logs", "loading", "0"),
        ("output", "TOKEN {}\n", "1"),
        ("output", "MSG {}\n", "2"),
        ("done", "{}", "3"),
    ]
    body = prediction.to_json("http://127.0.0.1:9")
    assert body["status"] == "succeeded"
    assert body["output"] == ["TOKEN {}\n", "MSG {}\n"]
    assert body["logs"] == "loading\n"
    assert body["metrics"]["predict_time"] == 0.5
    assert body["urls"]["stream"] == "http://127.0.0.1:9/v1/predictions/p1/stream"
    assert body["started_at"] <= body["completed_at"]


@pytest.mark.parametrize(
    ("status", "tail"),
    [
        ("failed", [("error", {"detail": "boom"}), ("done", {"reason": "error"})]),
        ("canceled", [("done", {"reason": "canceled"})]),
    ],
)
def test_failure_and_cancelation_end_the_stream_with_replicates_reasons(
    status: str, tail: list[tuple[str, dict[str, str]]]
) -> None:
    prediction = _prediction()
    prediction.mark_processing()
    prediction.finish(status, error="boom" if status == "failed" else None)

    assert [(name, json.loads(data)) for name, data, _ in _events(prediction)] == tail


def test_nothing_changes_once_the_prediction_is_terminal() -> None:
    prediction = _prediction()
    prediction.finish("canceled")
    prediction.mark_processing()
    prediction.add_output("late chunk")
    prediction.finish("failed", error="late failure")

    assert prediction.status == "canceled"
    assert prediction.output is None and prediction.error is None
    assert [name for name, _, _ in _events(prediction)] == ["done"]


def test_following_resumes_after_the_last_event_id_seen() -> None:
    prediction = _prediction()
    prediction.mark_processing()
    for chunk in ("a", "b", "c"):
        prediction.add_output(chunk)
    prediction.finish("succeeded")

    assert [data for _, data, _ in _events(prediction, after=1)] == ["c", "{}"]


def test_a_follower_sees_chunks_written_after_it_started_waiting() -> None:
    prediction = _prediction()
    prediction.mark_processing()

    async def follow_while_written() -> list[str]:
        follower = asyncio.create_task(_follow(prediction))
        await asyncio.sleep(0.05)  # the follower waits for a first event
        prediction.add_output("first")
        prediction.finish("succeeded")
        return [data for _, data, _ in await asyncio.wait_for(follower, timeout=5)]

    assert asyncio.run(follow_while_written()) == ["first", "{}"]


def test_waiting_ends_when_the_prediction_ends() -> None:
    prediction = _prediction()

    async def wait_while_it_ends() -> tuple[bool, bool]:
        waiter = asyncio.create_task(prediction.wait(timeout=5))
        await asyncio.sleep(0.05)
        prediction.finish("succeeded")
        return await waiter, await prediction.wait(timeout=0)

    assert asyncio.run(wait_while_it_ends()) == (True, True)
