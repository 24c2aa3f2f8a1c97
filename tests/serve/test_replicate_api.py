"""The Replicate-compatible API in front of the real Cog server, driven by real clients.

One echo model (tests/serve/fixtures/echo_model) is served for the whole module by the real
coglet server, with the schema ./serve writes. Clients: the ``replicate`` Python client, LMQL
0.7.3's own ``LMTPReplicateClient`` (redirected from api.replicate.com), and raw HTTP where the
exact wire format is the point.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import replicate
from replicate.exceptions import ReplicateError

from lmtp_cog.serve.redirect import redirect_replicate_api
from lmtp_cog.serve.service import Served, serve_project
from lmtp_cog.serve.sse import Event, parse_events
from tests.support.http import request_json
from tests.support.served_projects import ECHO_MODEL


@pytest.fixture(scope="module")
def served(work_dir: Path) -> Iterator[Served]:
    with serve_project(work_dir / ECHO_MODEL, port=0) as served:
        yield served


@pytest.fixture
def client(served: Served) -> replicate.Client:
    return replicate.Client(api_token="any-token", base_url=served.api_url)


def _ops(*ops: tuple[str, dict[str, Any]]) -> str:
    return json.dumps([list(op) for op in ops])


def _generate(prompt_last: int, max_tokens: int, **knobs: Any) -> dict[str, str]:
    """The input of one GENERATE whose tokens are prompt_last + 1, prompt_last + 2, ..."""
    args = {"stream_id": 1, "prompt": [1, prompt_last], "max_tokens": max_tokens, **knobs}
    return {"ops_batch_json": _ops(("GENERATE", args))}


def _tokens(output: Any) -> list[int]:
    lines = "".join(output).splitlines()
    tokens = [json.loads(line[len("TOKEN ") :]) for line in lines if line.startswith("TOKEN ")]
    return [token["token"] for token in tokens]


def _request(
    served: Served, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    status, _, answer = request_json(
        served.api_url + path,
        method=method,
        body=body,
        headers={"Authorization": "Token x", **(headers or {})},
        timeout=30,
    )
    return status, answer


def _create(served: Served, inputs: dict[str, Any], **headers: str) -> dict[str, Any]:
    status, body = _request(
        served, "POST", f"/v1/models/someone/{ECHO_MODEL}/predictions", {"input": inputs}, headers
    )
    assert status == 201, body
    return body


def _stream(url: str, headers: dict[str, str] | None = None) -> tuple[str, list[Event]]:
    """The raw text of a prediction's stream, and its parsed events."""
    request = urllib.request.Request(
        url, headers={"Accept": "text/event-stream", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        raw = response.read()
    return raw.decode(), list(parse_events(raw.splitlines(keepends=True)))


def _wait_for_status(served: Served, prediction_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, body = _request(served, "GET", f"/v1/predictions/{prediction_id}")
        if body["status"] == wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{prediction_id} never reached {wanted}: {body}")


# --- the replicate Python client ----------------------------------------------------------------


def test_replicate_run_with_a_version_returns_the_models_chunks(
    served: Served, client: replicate.Client
) -> None:
    output = client.run(f"someone/{ECHO_MODEL}:{served.model.version_id}", input=_generate(5, 3))

    chunks = list(output)
    assert len(chunks) == 3 and all(chunk.endswith("\n") for chunk in chunks)
    assert _tokens(chunks) == [6, 7, 8]


def test_replicate_run_by_model_name_accepts_any_owner(client: replicate.Client) -> None:
    output = client.run(f"whoever/{ECHO_MODEL}", input=_generate(40, 2))

    assert _tokens(output) == [41, 42]


def test_replicate_stream_delivers_each_chunk_as_the_model_yields_it(
    client: replicate.Client,
) -> None:
    arrivals: list[tuple[str, float]] = []
    for event in client.stream(f"someone/{ECHO_MODEL}", input=_generate(10, 4, delay=0.3)):
        arrivals.append((event.event.value, time.monotonic()))

    outputs = [when for kind, when in arrivals if kind == "output"]
    assert len(outputs) == 4
    # Buffered output would arrive all at once at the end; streamed output 0.3 s apart.
    assert outputs[-1] - outputs[0] > 0.5
    assert arrivals[-1][0] == "done"


def test_the_replicate_clients_stream_reads_every_line_break_as_a_newline(
    served: Served, client: replicate.Client
) -> None:
    """SSE cannot carry a CR inside a data line, and the client's httpx also ends lines at
    U+2028 and friends: the stream gives each as ``\\n``, losing nothing else; the prediction
    itself keeps the exact text."""
    texts = ["a\rb", "line1\r\n", "x\u2028y\x0bz", "\r\r", "plain, \u00e9t\u00e9 \U0001f600"]
    ops = [["TEXT", {"text": text}] for text in texts]

    inputs = {"ops_batch_json": json.dumps(ops)}

    events = client.stream(f"someone/{ECHO_MODEL}", input=inputs)
    streamed = [str(event) for event in events if event.event.value == "output"]

    assert streamed == ["a\nb", "line1\n", "x\ny\nz", "\n\n", "plain, \u00e9t\u00e9 \U0001f600"]
    created = _create(served, inputs, Prefer="wait")
    assert created["status"] == "succeeded"
    assert created["output"] == texts
    _, fetched = _request(served, "GET", f"/v1/predictions/{created['id']}")
    assert fetched["output"] == texts
    assert client.predictions.get(created["id"]).output == texts


def test_a_bad_input_is_refused_with_422_by_cogs_schema_check(
    served: Served, client: replicate.Client
) -> None:
    with pytest.raises(ReplicateError) as wrong_type:
        client.run(f"someone/{ECHO_MODEL}", input={"ops_batch_json": 5})
    with pytest.raises(ReplicateError) as missing:
        client.run(f"someone/{ECHO_MODEL}", input={"prompt": "no ops"})

    assert wrong_type.value.status == 422 and "ops_batch_json" in str(wrong_type.value.detail)
    assert missing.value.status == 422 and "required" in str(missing.value.detail)
    # Nothing was started: the next prediction runs at once.
    assert _tokens(client.run(f"someone/{ECHO_MODEL}", input=_generate(1, 1))) == [2]


def test_the_replicate_client_reaches_a_redirected_api_replicate_com(served: Served) -> None:
    with redirect_replicate_api(served.api_url):
        model = replicate.Client(api_token="x").models.get(f"someone/{ECHO_MODEL}")

    assert model.latest_version is not None
    assert model.latest_version.id == served.model.version_id


# --- models and versions ------------------------------------------------------------------------


def test_the_model_its_versions_and_the_schema_are_served(served: Served) -> None:
    status, model = _request(served, "GET", f"/v1/models/someone/{ECHO_MODEL}")
    assert status == 200
    assert (model["owner"], model["name"]) == ("someone", ECHO_MODEL)
    version = model["latest_version"]
    assert version["id"] == served.model.version_id
    assert version["openapi_schema"]["components"]["schemas"]["Input"]["required"] == [
        "ops_batch_json"
    ]

    status, page = _request(served, "GET", f"/v1/models/other/{ECHO_MODEL}/versions")
    assert status == 200 and [v["id"] for v in page["results"]] == [version["id"]]
    status, same = _request(
        served, "GET", f"/v1/models/someone/{ECHO_MODEL}/versions/{version['id']}"
    )
    assert status == 200 and same == version
    status, slashed = _request(served, "GET", f"/v1/models/someone/{ECHO_MODEL}/")
    assert status == 200 and slashed["latest_version"] == version


def test_unknown_models_versions_and_predictions_are_refused(served: Served) -> None:
    status, body = _request(served, "GET", "/v1/models/someone/another-model")
    assert status == 404 and ECHO_MODEL in body["detail"]

    status, body = _request(
        served, "POST", "/v1/predictions", {"version": "0" * 64, "input": _generate(1, 1)}
    )
    assert status == 422 and body["title"] == "Invalid version or not permitted"

    status, body = _request(served, "GET", "/v1/predictions/nosuchprediction")
    assert status == 404


def test_every_creation_route_runs_the_model(served: Served) -> None:
    version = served.model.version_id
    routes = [
        ("/v1/predictions", {"version": version}),
        ("/v1/predictions", {"version": f"anyone/{ECHO_MODEL}:{version}"}),
        (f"/v1/models/anyone/{ECHO_MODEL}/predictions", {}),
        (f"/v1/deployments/anyone/{ECHO_MODEL}/predictions", {}),
    ]
    for path, extra in routes:
        status, body = _request(
            served, "POST", path, {**extra, "input": _generate(7, 2)}, {"Prefer": "wait"}
        )
        assert status == 201, (path, body)
        assert body["status"] == "succeeded" and _tokens(body["output"]) == [8, 9], path
        assert body["version"] == version


# --- predictions: waiting, streaming, failing, canceling ----------------------------------------


def test_prefer_wait_answers_with_the_finished_prediction(served: Served) -> None:
    waited = _create(served, _generate(3, 2), Prefer="wait=30")
    not_waited = _create(served, _generate(3, 2, delay=0.2))

    assert waited["status"] == "succeeded" and _tokens(waited["output"]) == [4, 5]
    assert waited["completed_at"] is not None and waited["metrics"]["predict_time"] > 0
    assert not_waited["status"] in ("starting", "processing")
    finished = _wait_for_status(served, not_waited["id"], "succeeded")
    assert _tokens(finished["output"]) == [4, 5]


def test_the_stream_splits_multi_line_chunks_and_ends_with_done(served: Served) -> None:
    prediction = _create(served, _generate(20, 3, lines_per_chunk=3))

    raw, events = _stream(prediction["urls"]["stream"])

    outputs = [event for event in events if event.name == "output"]
    assert len(outputs) == 1 and _tokens(outputs[0].data) == [21, 22, 23]
    # Three lines and the empty remainder after the last newline: four data: lines.
    output_block = next(block for block in raw.split("\n\n") if "event: output" in block)
    assert [line for line in output_block.splitlines() if line.startswith("data:")][-1] == "data: "
    assert sum(line.startswith("data:") for line in output_block.splitlines()) == 4
    assert [event.name for event in events] == ["logs", "output", "done"]
    assert json.loads(events[-1].data) == {}
    assert [event.id for event in events] == ["0", "1", "2"]


def test_a_reconnecting_client_resumes_after_its_last_event_id(served: Served) -> None:
    prediction = _create(served, _generate(30, 3), Prefer="wait")

    _, events = _stream(prediction["urls"]["stream"], {"Last-Event-ID": "1"})

    assert [event.id for event in events] == ["2", "3", "4"]
    assert _tokens(event.data for event in events if event.name == "output") == [32, 33]


def test_a_failing_prediction_streams_error_then_done(
    served: Served, client: replicate.Client
) -> None:
    inputs = {"ops_batch_json": _ops(("GENERATE", {"prompt": [1], "max_tokens": 2}), ("FAIL", {}))}
    prediction = _create(served, inputs)

    _, events = _stream(prediction["urls"]["stream"])

    assert [event.name for event in events][-2:] == ["error", "done"]
    assert "asked to fail" in json.loads(events[-2].data)["detail"]
    assert json.loads(events[-1].data) == {"reason": "error"}
    _, body = _request(served, "GET", f"/v1/predictions/{prediction['id']}")
    assert body["status"] == "failed" and "asked to fail" in body["error"]
    assert _tokens(body["output"]) == [2, 3]
    with pytest.raises(RuntimeError, match="asked to fail"):
        list(client.stream(f"someone/{ECHO_MODEL}", input=inputs))


def test_canceling_a_running_prediction_stops_it_on_cog(served: Served) -> None:
    prediction = _create(served, _generate(50, 40, delay=0.1))
    _wait_for_status(served, prediction["id"], "processing")

    status, canceled = _request(served, "POST", f"/v1/predictions/{prediction['id']}/cancel")

    assert status == 200 and canceled["status"] == "canceled"
    assert len(canceled["output"]) < 40
    _, events = _stream(prediction["urls"]["stream"])
    assert json.loads(events[-1].data) == {"reason": "canceled"}
    # The Cog server is free again.
    assert _create(served, _generate(1, 1), Prefer="wait")["status"] == "succeeded"


def test_canceling_a_queued_prediction_means_it_never_runs(served: Served) -> None:
    running = _create(served, _generate(60, 30, delay=0.1))
    _wait_for_status(served, running["id"], "processing")
    queued = _create(served, _generate(70, 2))

    _, canceled = _request(served, "POST", f"/v1/predictions/{queued['id']}/cancel")
    _request(served, "POST", f"/v1/predictions/{running['id']}/cancel")

    assert canceled["status"] == "canceled"
    assert canceled["started_at"] is None and canceled["output"] is None
    _, later = _request(served, "GET", f"/v1/predictions/{queued['id']}")
    assert later["status"] == "canceled" and later["logs"] == ""


def test_concurrent_clients_are_queued_and_each_gets_its_own_output(served: Served) -> None:
    def run(prompt_last: int) -> list[int]:
        client = replicate.Client(api_token="x", base_url=served.api_url)
        chunks = [
            str(event)
            for event in client.stream(
                f"someone/{ECHO_MODEL}", input=_generate(prompt_last, 5, delay=0.02)
            )
        ]
        return _tokens(chunks)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, [100, 200, 300, 400]))

    assert results == [list(range(base + 1, base + 6)) for base in (100, 200, 300, 400)]


def test_a_prediction_waits_while_a_client_of_the_cog_port_holds_the_slot(served: Served) -> None:
    outsider = threading.Thread(
        target=served.cog.predict, args=(_generate(90, 6, delay=0.1),), daemon=True
    )
    outsider.start()
    time.sleep(0.3)  # the outsider's prediction is running on Cog

    waiting = _create(served, _generate(80, 2))

    assert waiting["status"] == "starting"
    finished = _wait_for_status(served, waiting["id"], "succeeded")
    outsider.join(timeout=10)
    assert _tokens(finished["output"]) == [81, 82]
    assert finished["started_at"] is not None


# --- LMQL's own Replicate client ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Unknown command:UserWarning")  # LMQL also parses `logs` events
def test_lmqls_replicate_client_gets_tokens_scores_and_model_info(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp
    from lmql.models.lmtp.lmtp_replicate_client import LMTPReplicateClient

    monkeypatch.setenv("REPLICATE_API_TOKEN", "any-token")

    async def talk() -> tuple[list[dict], list[dict], dict, list[list[int]]]:
        async with aiohttp.ClientSession() as session:
            lmql_client = LMTPReplicateClient(
                f"someone/{ECHO_MODEL}", session, f"replicate:someone/{ECHO_MODEL}"
            )
            generated = [t async for t in lmql_client.generate([1, 9], max_tokens=3)]
            scored = [t async for t in lmql_client.score([1, 2], [5, 6])]
            info = await lmql_client.request("MODEL_INFO", {})

            async def tokens(last: int) -> list[int]:
                return [t["token"] async for t in lmql_client.generate([last], max_tokens=3)]

            together = await asyncio.gather(tokens(100), tokens(200), tokens(300))
            return generated, scored, info, list(together)

    with redirect_replicate_api(served.api_url):
        generated, scored, info, together = asyncio.run(talk())

    assert [t["token"] for t in generated] == [10, 11, 12]
    assert generated[-1]["finish_reason"] == "length"
    assert [t["token"] for t in scored] == [5, 6]
    assert info["model_info"] == {"name": "echo-model"}
    assert together == [[101, 102, 103], [201, 202, 203], [301, 302, 303]]
