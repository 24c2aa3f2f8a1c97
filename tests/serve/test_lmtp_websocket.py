"""LMQL's native LMTP websocket endpoint of ``./serve``, against real LMQL with no patching.

A project is built by the real builder from a tiny random Llama checkpoint and served by the real
Cog server; LMQL connects with ``lmql.model(..., endpoint="HOST:PORT")`` as it would to
``lmql serve-model``. Answers are compared with the model itself, run by plain transformers. The
echo stand-in model (``fixtures/echo_model``) covers what a real model does not do on demand:
fail in the middle of a prediction, or take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lmtp_cog.build import BuildOptions, build
from lmtp_cog.serve.banner import banner
from lmtp_cog.serve.errors import ServeError
from lmtp_cog.serve.lmtp_frames import Command, answer_messages, parse_command
from lmtp_cog.serve.service import Served, serve_project
from lmtp_cog.tiny_models import make_model
from tests.support.lmtp_reference import Reference
from tests.support.paths import SERVE_SCRIPT
from tests.support.served_projects import ECHO_MODEL

# LMQL never closes the websocket task of a model it is done with; the garbage collector does,
# at some later point of the session, and Python reports that as an unraisable exception.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <coroutine object LMTPDcModel.ws_client_loop"
    ":pytest.PytestUnraisableExceptionWarning"
)

MODEL = "tiny-llama"
OWNER = "tester"
MAX_TOKENS = 10


@pytest.fixture(scope="module", autouse=True)
def _let_lmql_see_the_servers_go() -> Iterator[None]:
    """Once the servers are down, run LMQL's loop a moment: the websocket clients it abandoned
    (it keeps them, waiting, in its own loop, which runs only during a query) then read the
    servers' close. A client left open is closed at the interpreter's exit, half torn down, and
    Python prints that after pytest's summary."""
    yield
    from lmql.runtime import loop as lmql_runtime_loop

    loop = lmql_runtime_loop.lmql_loop
    if loop is not None and not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(asyncio.sleep(0.2))


# --- a built project, served; the same model in transformers for the expected answers ------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lmtp-websocket")
    make_model(root / "model")
    config = root / "config.toml"
    config.write_text(
        f'dest_prefix = "r8.im/{OWNER}/"\n\n[models.{MODEL}]\nhuggingface.repo = "./model"\n'
    )
    build(BuildOptions(config_path=config, work_dir=root / "work"), report=lambda _: None)
    return root / "work" / MODEL


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[Served]:
    with serve_project(project, port=0, lmtp_port=0) as served:
        yield served


@pytest.fixture(scope="module")
def echo(work_dir: Path) -> Iterator[Served]:
    with serve_project(work_dir / ECHO_MODEL, port=0, lmtp_port=0) as served:
        yield served


@pytest.fixture(scope="module")
def reference(project: Path) -> Reference:
    return Reference(project / "checkpoints")


def _lmql_model(served: Served, project: Path) -> Any:
    import lmql

    return lmql.model(
        f"{OWNER}/{MODEL}", endpoint=served.lmtp_endpoint, tokenizer=str(project / "checkpoints")
    )


# --- real LMQL queries ----------------------------------------------------------------------------


def test_an_argmax_query_with_stops_at_equals_transformers_greedy_decoding(
    served: Served, project: Path, reference: Reference
) -> None:
    import lmql

    greedy = reference.text(reference.greedy_ids(reference.encode("Hello"), MAX_TOKENS - 1))
    # A stop phrase the greedy answer reaches within its first tokens, so that it cuts the answer.
    stop = reference.text(reference.greedy_ids(reference.encode("Hello"), 4))[-2:]
    expected = greedy[: greedy.index(stop) + len(stop)]
    assert stop.strip() and len(expected) < len(greedy)

    result = lmql.run_sync(
        f'argmax "Hello[WHO]" where STOPS_AT(WHO, {json.dumps(stop)}) '
        f"and len(TOKENS(WHO)) < {MAX_TOKENS}",
        model=_lmql_model(served, project),
    )

    assert result.variables["WHO"] == expected


def test_a_distribution_query_gives_the_normalised_scores_of_the_model(
    served: Served, project: Path, reference: Reference
) -> None:
    import lmql

    values = [" yes", " no", " forty two"]
    result = lmql.run_sync(
        'argmax "Hello[WHO] Answer:[ANSWER]" where len(TOKENS(WHO)) < 4 '
        f"distribution ANSWER in {json.dumps(values)}",
        model=_lmql_model(served, project),
    )

    # LMQL scores each value after the prompt as it stands before ANSWER, and normalises the
    # values' mean token log-probabilities with a softmax.
    prefix = result.prompt.removesuffix(result.variables["ANSWER"])
    means = [
        sum(scores) / len(scores)
        for scores in (
            reference.score(reference.encode(prefix), reference.ids(value)) for value in values
        )
    ]
    total = sum(math.exp(mean) for mean in means)
    expected = [math.exp(mean) / total for mean in means]
    distribution = result.variables["P(ANSWER)"]
    assert [value for value, _ in distribution] == values
    assert [float(p) for _, p in distribution] == pytest.approx(expected, abs=1e-5)
    assert result.variables["ANSWER"] == values[max(range(3), key=expected.__getitem__)]
    assert max(expected) - min(expected) > 1e-3  # the model tells the values apart


def test_a_query_whose_prompt_the_model_refuses_raises_the_models_error(
    served: Served, project: Path
) -> None:
    import lmql
    from lmql.models.lmtp.errors import LMTPStreamError

    too_long = "Hello " * 300  # more tokens than the checkpoint's context window of 256

    with pytest.raises(LMTPStreamError, match="context window"):
        lmql.run_sync(f'argmax "{too_long}[WHO]"', model=_lmql_model(served, project))


# --- LMQL's websocket client, command by command --------------------------------------------------


@contextlib.asynccontextmanager
async def _lmtp_client(endpoint: str | None) -> Any:
    """LMQL's own websocket client, connected as ``lmql.model(..., endpoint=...)`` connects it."""
    from lmql.models.lmtp.lmtp_client import LMTPWebSocketClient

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://{endpoint}") as ws:
            client = LMTPWebSocketClient(f"{OWNER}/{MODEL}", ws)
            client.connect()
            yield client


async def _generate(client: Any, prompt: list[int], max_tokens: int) -> list[int]:
    return [t["token"] async for t in client.generate(prompt, max_tokens=max_tokens, temperature=0)]


async def _score(client: Any, prompt: list[int], scored: list[int]) -> list[float]:
    return [t["logprob"] async for t in client.score(prompt, scored)]


def _replicate_generate(api_url: str, prompt: list[int], max_tokens: int) -> list[int]:
    """The same GENERATE through the Replicate-compatible API, with the stream id 1 too."""
    ops = [["GENERATE", {"stream_id": 1, "prompt": prompt, "max_tokens": max_tokens}]]
    request = urllib.request.Request(
        f"{api_url}/v1/models/{OWNER}/{MODEL}/predictions",
        data=json.dumps({"input": {"ops_batch_json": json.dumps(ops)}}).encode(),
        headers={"Content-Type": "application/json", "Prefer": "wait"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        prediction = json.load(response)
    lines = "".join(prediction["output"]).splitlines()
    return [json.loads(line.removeprefix("TOKEN "))["token"] for line in lines]


def test_concurrent_commands_of_two_clients_and_the_replicate_api_each_get_their_own_answer(
    served: Served, reference: Reference
) -> None:
    prompts = [reference.encode(text) for text in ("Hello", "The quick brown", "Who are")]
    scored = reference.ids(" world. The answer")

    async def one_client(prompt_order: list[list[int]]) -> tuple[list[list[int]], list[float]]:
        # Stream ids count from 1 on each connection: the two clients use the same ones.
        async with _lmtp_client(served.lmtp_endpoint) as client:
            *generated, scores = await asyncio.gather(
                *(_generate(client, prompt, 6) for prompt in prompt_order),
                _score(client, prompts[0], scored),
            )
            return generated, scores

    async def everyone() -> Any:
        return await asyncio.gather(
            one_client(prompts),
            one_client(prompts[::-1]),
            asyncio.to_thread(_replicate_generate, served.api_url, prompts[1], 6),
        )

    (first, first_scores), (second, second_scores), via_api = asyncio.run(everyone())

    expected = [reference.greedy_ids(prompt, 6) for prompt in prompts]
    assert first == expected
    assert second == expected[::-1]
    assert via_api == expected[1]
    assert first_scores == pytest.approx(reference.score(prompts[0], scored), abs=1e-4)
    assert second_scores == first_scores


def test_model_info_answers_lmqls_request(served: Served) -> None:
    async def ask() -> Any:
        async with _lmtp_client(served.lmtp_endpoint) as client:
            return await client.request("MODEL_INFO", {"model": f"{OWNER}/{MODEL}"})

    answer = asyncio.run(ask())

    assert answer["stream_id"] == 1
    assert answer["model_info"]["name"] == MODEL


def test_a_bad_generate_raises_lmqls_stream_error_with_the_models_reason(
    served: Served, reference: Reference
) -> None:
    from lmql.models.lmtp.errors import LMTPStreamError

    vocabulary = len(reference.tokenizer)

    async def generate() -> list[int]:
        async with _lmtp_client(served.lmtp_endpoint) as client:
            return await _generate(client, [1, vocabulary + 5], 2)

    with pytest.raises(LMTPStreamError, match=f"token id {vocabulary + 5}, outside the vocabulary"):
        asyncio.run(generate())


async def _exchange(endpoint: str | None, messages: list[str]) -> list[tuple[str, Any]]:
    """Send raw messages; the answers, one per message sent, as ``(kind, payloads)``."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://{endpoint}") as ws:
            for message in messages:
                await ws.send_str(message)
            answers = []
            for _ in messages:
                kind, _, body = (await ws.receive_str(timeout=30)).partition(" ")
                answers.append((kind, json.loads(body)))
            return answers


def test_a_message_that_is_no_command_gets_lmqls_error_answer(served: Served) -> None:
    answers = asyncio.run(
        _exchange(
            served.lmtp_endpoint,
            ['FOO {"stream_id": 7}', "hello", "GENERATE [1, 2]", "SCORE {not json"],
        )
    )

    assert ("MSG", [{"stream_id": 7, "error": "unknown command 'FOO'"}]) in answers
    invalid = [payloads[0] for kind, payloads in answers if kind == "MSG"]
    assert len(invalid) == 4 and all(p["stream_id"] in (7, None) for p in invalid)
    errors = sorted(p["error"] for p in invalid if p["stream_id"] is None)
    assert errors[0].startswith("invalid LMTP message: expected 'COMMAND {json}', got 'hello'")
    assert "the arguments of GENERATE must be a JSON object" in errors[1]
    assert "the arguments of SCORE are not JSON" in errors[2]


def test_a_plain_http_request_is_told_what_the_endpoint_is(served: Served) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{served.lmtp_endpoint}/", timeout=10)

    assert refused.value.code == 426
    assert "lmql.model(" in refused.value.read().decode()


# --- failures and departures, with the echo model -------------------------------------------------


def test_a_prediction_that_fails_ends_the_stream_with_an_error(echo: Served) -> None:
    from lmql.models.lmtp.errors import LMTPStreamError

    async def generate() -> list[int]:
        async with _lmtp_client(echo.lmtp_endpoint) as client:
            # The echo model raises on a GENERATE without a prompt: Cog fails the prediction.
            return [t["token"] async for t in client.generate(None, max_tokens=2)]

    with pytest.raises(LMTPStreamError, match="the prediction failed"):
        asyncio.run(generate())


def test_a_client_that_leaves_frees_the_queue_at_once(echo: Served) -> None:
    slow = 'GENERATE {"stream_id": 1, "prompt": [5], "max_tokens": 300, "delay": 0.1}'

    async def leave_early() -> str:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://{echo.lmtp_endpoint}") as ws:
                await ws.send_str(slow)  # 30 s of output, if nobody cancels it
                return await ws.receive_str(timeout=30)

    first = asyncio.run(leave_early())
    started = time.monotonic()
    answer = asyncio.run(_exchange(echo.lmtp_endpoint, ['MODEL_INFO {"stream_id": 2}']))
    waited = time.monotonic() - started

    assert json.loads(first.removeprefix("TOKEN "))[0]["token"] == 6
    assert answer == [("MSG", [{"stream_id": 2, "model_info": {"name": "echo-model"}}])]
    assert waited < 5, f"the next command waited {waited:.1f} s: the slow one was not canceled"


# --- how ./serve presents it ----------------------------------------------------------------------


def test_the_banners_lmql_snippet_runs_as_printed(
    served: Served, project: Path, reference: Reference
) -> None:
    text = banner(served, project_dir=project, startup_seconds=1.0)
    heading = "\nLMQL, native"
    snippet = text[text.index(heading) :].split("\n\n", 2)[1]

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec("\n".join(line.removeprefix("    ") for line in snippet.splitlines()), {})

    expected = reference.text(reference.greedy_ids(reference.encode("Hello"), 9))
    assert f"LMTP websocket (LMQL)     ws://{served.lmtp_endpoint}/" in text
    assert "redirect" not in snippet
    assert f"'WHO': {expected!r}" in output.getvalue()


def test_a_port_in_use_is_reported_before_the_model_is_loaded(work_dir: Path) -> None:
    started = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serving = serve_project(work_dir / ECHO_MODEL, lmtp_port=port, on_cog_started=started.append)
        with pytest.raises(ServeError) as refused, serving:
            pass

    assert str(refused.value) == (
        f"cannot listen on 127.0.0.1:{port} for the LMTP websocket endpoint: the port is in use; "
        "choose another with --lmtp-port."
    )
    assert started == []


def test_help_names_the_lmtp_port_and_its_default() -> None:
    run = subprocess.run(
        [str(SERVE_SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )

    assert run.returncode == 0
    assert "--lmtp-port PORT" in run.stdout and "default: 8080" in run.stdout


# --- the message format on its own ----------------------------------------------------------------


def test_lines_of_one_chunk_become_list_messages_with_the_commands_stream_id() -> None:
    command = parse_command('GENERATE {"stream_id": "s-1", "prompt": [1]}')
    chunk = (
        'TOKEN {"stream_id": "s-1", "token": 5, "logprob": -0.5, "finish_reason": null}\n'
        'TOKEN {"stream_id": null, "token": 6, "logprob": -0.25, "finish_reason": "length"}\n'
        'MSG {"stream_id": null, "error": "oops"}\n'
    )

    messages = answer_messages(chunk, command)

    assert [m.split(" ", 1)[0] for m in messages] == ["TOKEN", "MSG"]
    tokens = json.loads(messages[0].split(" ", 1)[1])
    assert [(t["stream_id"], t["token"]) for t in tokens] == [("s-1", 5), ("s-1", 6)]
    assert json.loads(messages[1].split(" ", 1)[1]) == [{"stream_id": "s-1", "error": "oops"}]


def test_a_command_is_one_op_of_one_prediction_and_fails_the_way_lmql_reads_it() -> None:
    generate = Command("GENERATE", {"stream_id": 3, "prompt": [1, 2]})
    info = Command("MODEL_INFO", {"stream_id": 4})

    assert json.loads(generate.cog_input()["ops_batch_json"]) == [
        ["GENERATE", {"stream_id": 3, "prompt": [1, 2]}]
    ]
    assert generate.error_message("boom") == 'TOKEN [{"stream_id":3,"error":"boom"}]'
    assert info.error_message("boom") == 'MSG [{"stream_id":4,"error":"boom"}]'
