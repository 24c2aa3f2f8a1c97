"""Text mode end to end: a project made by the real builder, served by the real Cog server behind
./serve's Replicate-compatible API, called by real Replicate LLM clients.

- Cog itself: the streamed chunks, the schema's 422 for out-of-range inputs, and failed
  predictions naming the input for what the schema cannot express;
- the ``replicate`` Python client: ``run()`` and ``stream()`` with the input of Replicate's
  Llama 2 lesson;
- LiteLLM's Replicate provider, with and without ``stream=True``;
- promptfoo's Replicate provider (Node, not run here): its request replayed byte for byte.

Expected text comes from the same runtime in this process, on the same built project, given the
input the client actually sent; test_text_mode.py checks that runtime against transformers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import replicate
from lmtp_runtime.inputs import RUN_INPUTS
from lmtp_runtime.predictor import LmtpPredictor

from lmtp_cog.build import BuildOptions, build
from lmtp_cog.serve.redirect import redirect_replicate_api
from lmtp_cog.serve.service import Served, serve_project
from lmtp_cog.tiny_models import make_model
from tests.support.http import request_json

# LiteLLM's import builds pydantic models that warn about typing details of its own.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the .ReadOnly. qualifier")

OWNER, MODEL = "tester", "tiny-chat"
REF = f"{OWNER}/{MODEL}"
LLAMA2_LESSON_INPUT = {
    "prompt": "Can you write a poem about open source machine learning?",
    "temperature": 0.1,
    "top_p": 0.9,
    "max_length": 128,
    "repetition_penalty": 1,
}
"""The input of Replicate's "Run Llama 2 with an API" lesson (the ``replicate`` client)."""

PROMPTFOO_INPUT = {
    "max_length": 24,
    "max_new_tokens": 24,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "repetition_penalty": 1.1,
    "stop_sequences": "<end>,\n\n",
    "seed": 42,
    "system_prompt": "Be brief.",
    "prompt": "What is the answer?",
}
"""What promptfoo 0.123.1's ``replicate:OWNER/NAME`` provider posts as ``input`` when its config
sets every option it knows. From ``ReplicateProvider.callApiInternal`` (src/providers/replicate.ts,
shipped as dist/src/providers-*.js): ``{...config, max_length, max_new_tokens, temperature,
top_p, top_k, repetition_penalty, stop_sequences, seed, system_prompt, prompt}``, each option from
the provider config or a ``REPLICATE_*`` variable, unset ones left out."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``./build`` of a config.toml naming a local folder: a tiny Llama with a chat template."""
    root = tmp_path_factory.mktemp("text-clients")
    make_model(root / "model", chat_template=True)
    config = root / "config.toml"
    config.write_text(
        f'dest_prefix = "r8.im/{OWNER}/"\n\n[models.{MODEL}]\nhuggingface.repo = "./model"\n'
    )
    report = build(BuildOptions(config_path=config, work_dir=root / "work"), report=lambda line: None)
    [outcome] = report.outcomes
    return outcome.path


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[Served]:
    """The project behind ./serve's stack, which also writes .cog/openapi_schema.json."""
    with serve_project(project, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def local(project: Path) -> Any:
    """The same project's predictor in this process, for the expected text."""
    return LmtpPredictor.from_settings(project / "model_settings.json")


def local_chunks(local: Any, inputs: dict[str, Any]) -> list[str]:
    """What ``run`` yields for ``inputs``; like Cog, inputs it does not take are ignored."""
    known = {spec.name for spec in RUN_INPUTS}
    return list(local.stream(**{name: value for name, value in inputs.items() if name in known}))


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, answer = request_json(url, body=body, headers=headers, timeout=120)
    return status, answer


# --- the Cog server -------------------------------------------------------------------------------


def test_cog_streams_the_text_piece_by_piece(served: Served, local: Any) -> None:
    inputs = {"prompt": "Hello", "system_prompt": "Be brief.", "max_new_tokens": 12}
    inputs["temperature"] = 0

    response = served.cog.predict(inputs)

    assert response["status"] == "succeeded", response
    assert response["output"] == local_chunks(local, inputs)
    assert len(response["output"]) > 1
    assert "text prediction: " in response["logs"] and "(chat_template)" in response["logs"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", 0),
        ("max_length", 0),
        ("max_tokens", 0),
        ("min_new_tokens", -2),
        ("temperature", -0.5),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", -1.0),
        ("seed", -1),
    ],
)
def test_the_schema_refuses_out_of_range_inputs_before_the_model_runs(
    served: Served, name: str, value: Any
) -> None:
    status, body = post(f"{served.cog.url}/predictions", {"input": {"prompt": "hi", name: value}})

    assert status == 422, body
    [problem] = body["detail"]
    assert problem["loc"] == ["body", "input", name]


def test_the_replicate_api_passes_the_422_on(served: Served) -> None:
    client = replicate.Client(api_token="any-token", base_url=served.api_url)
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.models.predictions.create(model=REF, input={"prompt": "hi", "temperature": -1})
    assert raised.value.status == 422
    assert "temperature" in str(raised.value)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prompt": "hi", "top_p": 0}, "top_p must be a number above 0"),
        ({"prompt": "hi", "repetition_penalty": 0}, "repetition_penalty must be a number above 0"),
        ({"prompt": "hi", "temperature": 1e-7}, "temperature must be 0 (greedy) or at least 1e-06"),
        ({"prompt": "hi", "ops_batch_json": "[]"}, "not both"),
        ({"system_prompt": "Be brief."}, "Give a prompt to generate text, or ops_batch_json"),
    ],
)
def test_what_the_schema_cannot_express_fails_the_prediction_with_a_message(
    served: Served, inputs: dict[str, Any], message: str
) -> None:
    response = served.cog.predict(inputs)

    assert response["status"] == "failed"
    assert message in response["error"]


def test_lmtp_still_answers_on_the_same_server(served: Served) -> None:
    response = served.cog.predict({"ops_batch_json": '[["MODEL_INFO", {"stream_id": 1}]]'})

    assert response["status"] == "succeeded", response
    [line] = response["output"]
    assert json.loads(line.removeprefix("MSG "))["model_info"]["name"] == MODEL


# --- the replicate Python client ------------------------------------------------------------------


def test_replicate_run_with_the_llama2_lesson_input(served: Served, local: Any) -> None:
    client = replicate.Client(api_token="any-token", base_url=served.api_url)

    output = client.run(REF, input=LLAMA2_LESSON_INPUT)

    assert isinstance(output, list) and all(isinstance(piece, str) for piece in output)
    assert 1 < len(output) <= LLAMA2_LESSON_INPUT["max_length"]
    assert "".join(output).strip()
    seeded = {**LLAMA2_LESSON_INPUT, "seed": 5}
    assert client.run(REF, input=seeded) == local_chunks(local, seeded)


def test_replicate_stream_with_the_llama2_lesson_input(served: Served, local: Any) -> None:
    client = replicate.Client(api_token="any-token", base_url=served.api_url)
    seeded = {**LLAMA2_LESSON_INPUT, "seed": 6}

    events = list(client.stream(REF, input=seeded))

    output = [str(event) for event in events if event.event.value == "output"]
    assert output == local_chunks(local, seeded)
    assert events[-1].event.value == "done"


# --- LiteLLM --------------------------------------------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the answer?"},
]


@dataclass
class LiteLLM:
    """LiteLLM's ``completion`` on the served model, and the input of every prediction it made."""

    module: Any
    api_base: str
    sent: list[dict[str, Any]] = field(default_factory=list)

    def complete(self, **settings: Any) -> Any:
        return self.module.completion(
            model=f"replicate/{REF}", messages=MESSAGES, api_base=self.api_base, **settings
        )

    def record(self, kwargs: dict[str, Any], *rest: Any) -> None:
        """A LiteLLM success callback: keep the request body it sent to Replicate."""
        body = (kwargs.get("additional_args") or {}).get("complete_input_dict")
        if body:
            self.sent.append(body["input"])

    def sent_input(self, timeout: float = 10.0) -> dict[str, Any]:
        """The one input sent so far; LiteLLM calls its callbacks from another thread."""
        deadline = time.monotonic() + timeout
        while not self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        [sent] = self.sent
        return sent


@pytest.fixture
def litellm(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiteLLM]:
    """LiteLLM, offline, talking to ``served``."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # read at its import
    monkeypatch.setenv("REPLICATE_API_TOKEN", "any-token")
    import litellm as module

    # Its usage count would fetch a Llama tokenizer from the Hub (unreachable: minutes of retries).
    monkeypatch.setattr(module, "disable_hf_tokenizer_download", True)
    client = LiteLLM(module, served.api_url)
    monkeypatch.setattr(module, "success_callback", [client.record])
    # LiteLLM builds https://api.replicate.com/... itself and ignores api_base for Replicate.
    with redirect_replicate_api(served.api_url):
        yield client


def test_litellm_completion(litellm: LiteLLM, local: Any) -> None:
    response = litellm.complete(max_tokens=10, temperature=0)

    sent = litellm.sent_input()
    assert sent["max_new_tokens"] == 10 and sent["temperature"] == 0
    assert response.choices[0].message.content == "".join(local_chunks(local, sent))


def test_litellm_streaming_completion_with_a_seed(
    litellm: LiteLLM, local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM 1.106's Replicate provider lists `seed` as supported but never sends completion()'s
    # seed; its provider config (ReplicateConfig) is the way to pass Replicate inputs through.
    monkeypatch.setattr(litellm.module.ReplicateConfig, "seed", 7)
    settings = {"max_tokens": 10, "temperature": 0.8, "seed": 7}
    whole = litellm.complete(**settings)
    sent = litellm.sent_input()
    assert sent["seed"] == 7 and sent["max_new_tokens"] == 10
    expected = "".join(local_chunks(local, sent))
    assert whole.choices[0].message.content == expected

    deltas = [chunk.choices[0].delta.content for chunk in litellm.complete(stream=True, **settings)]

    assert "".join(delta for delta in deltas if delta) == expected


# --- promptfoo ------------------------------------------------------------------------------------


def test_promptfoos_request_is_answered(served: Served, local: Any) -> None:
    """promptfoo posts to https://api.replicate.com (hard-coded, no base URL setting) like this."""
    status, prediction = post(
        f"{served.api_url}/v1/models/{REF}/predictions",
        {"input": PROMPTFOO_INPUT},
        headers={"Authorization": "Bearer any-token", "Prefer": "wait=60"},
    )

    assert status == 201, prediction
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == local_chunks(local, PROMPTFOO_INPUT)
