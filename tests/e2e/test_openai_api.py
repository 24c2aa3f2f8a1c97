"""./serve's OpenAI-compatible API, on a model built by ./build and run by the real Cog runtime.

Clients: the official ``openai`` package (``OpenAI(base_url=.../openai/v1)``), LiteLLM's
``openai/`` provider, curl (the banner's snippet), and raw HTTP where the error's shape is the
point. Answers are compared with plain transformers on the same checkpoint: greedy decoding of
the prompt's token ids (for chat: the ids of the chat template's text), and ``log_softmax`` of the
model's logits for every logprob.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from lmtp_cog.serve.banner import banner
from lmtp_cog.serve.service import Served
from tests.support.http import request_json
from tests.support.lmtp_reference import Reference
from tests.support.served_projects import E2E_MODEL, E2E_OWNER, banner_snippet

PROMPT = "The quick brown"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
]
MAX_TOKENS = 12

# LiteLLM's import builds pydantic models that warn about typing details of its own.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the .ReadOnly. qualifier")


@pytest.fixture(scope="module")
def reference(built_project: Path) -> Reference:
    return Reference(built_project / "checkpoints")


@pytest.fixture
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.api_url}/openai/v1", api_key="any", max_retries=0)


def _post(served: Served, path: str, body: bytes | Any) -> tuple[int, dict[str, str], Any]:
    return request_json(served.api_url + path, body=body)


# --- completions ---------------------------------------------------------------------------------


def test_a_greedy_completion_equals_transformers_greedy_decoding(
    client: openai.OpenAI, reference: Reference
) -> None:
    prompt = reference.completion_ids(PROMPT)
    expected = reference.greedy_ids(prompt, MAX_TOKENS)

    completion = client.completions.create(
        model=E2E_MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )

    [choice] = completion.choices
    assert choice.text == reference.text(expected) and choice.text.strip()
    assert choice.finish_reason == reference.ended_by(expected)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        len(prompt),
        len(expected),
    )
    assert completion.usage.total_tokens == len(prompt) + len(expected)
    assert completion.object == "text_completion" and completion.model == E2E_MODEL


def test_a_streamed_completion_adds_up_to_the_whole_one(client: openai.OpenAI) -> None:
    settings = {"model": E2E_MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = client.completions.create(**settings)

    chunks = list(
        client.completions.create(**settings, stream=True, stream_options={"include_usage": True})
    )

    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len(texts) > 2 and "".join(texts) == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == (
        whole.choices[0].finish_reason
    )
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage


def test_completion_logprobs_and_echo_equal_transformers_log_softmax(
    client: openai.OpenAI, reference: Reference
) -> None:
    prompt = reference.completion_ids(PROMPT)
    generated = reference.greedy_ids(prompt, 6)
    dist = reference.logprobs(prompt + generated)

    completion = client.completions.create(
        model=E2E_MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, echo=True
    )

    [choice] = completion.choices
    logprobs = choice.logprobs
    assert logprobs is not None
    assert choice.text == PROMPT + reference.text(generated)
    ids = prompt + generated
    assert len(logprobs.tokens) == len(ids) and "".join(logprobs.tokens) == choice.text
    # The prompt's first token has nothing before it; every other one is scored (SCORE), and the
    # generated ones come with the top 3 of the same distribution.
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = [float(dist[j - 1, token]) for j, token in enumerate(ids) if j > 0]
    assert logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for offset, token in zip(logprobs.text_offset, logprobs.tokens, strict=True):
        assert choice.text[offset : offset + len(token)] == token
    for j in range(len(prompt), len(ids)):
        top3 = torch.topk(dist[j - 1], 3).values.tolist()
        assert sorted(logprobs.top_logprobs[j].values(), reverse=True) == pytest.approx(
            top3, abs=1e-4
        )


@pytest.mark.parametrize("logprobs", [None, 3], ids=["echo", "echo-with-logprobs"])
def test_a_streamed_echo_comes_first_and_adds_up_to_the_whole_completion(
    client: openai.OpenAI, logprobs: int | None
) -> None:
    settings = {
        "model": E2E_MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": True,
        "logprobs": logprobs,
    }
    whole = client.completions.create(**settings)

    chunks = [chunk.choices[0] for chunk in client.completions.create(**settings, stream=True)]

    # The echoed prompt is the first chunk: generated text never goes before it.
    assert chunks[0].text == PROMPT and len(chunks) > 2
    assert "".join(chunk.text for chunk in chunks) == whole.choices[0].text
    if logprobs is None:
        assert all(chunk.logprobs is None for chunk in chunks)
        return
    streamed = [chunk.logprobs for chunk in chunks if chunk.logprobs and chunk.logprobs.tokens]
    tokens = [token for entry in streamed for token in entry.tokens]
    token_logprobs = [value for entry in streamed for value in entry.token_logprobs]
    offsets = [offset for entry in streamed for offset in entry.text_offset]
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset
    assert token_logprobs[0] is None
    assert token_logprobs[1:] == pytest.approx(whole.choices[0].logprobs.token_logprobs[1:])


def test_a_stop_sequence_ends_the_text_before_it(
    client: openai.OpenAI, reference: Reference
) -> None:
    generated = reference.greedy_ids(reference.completion_ids(PROMPT), MAX_TOKENS)
    whole = reference.text(generated)
    # A stop phrase the greedy answer reaches after its first tokens, so that it cuts the answer.
    stop = reference.text(generated[:4])[-3:]
    assert stop.strip() and whole.index(stop) > 0
    settings = {
        "model": E2E_MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
        "stop": [stop, "never appears"],
    }

    completion = client.completions.create(**settings)
    streamed = list(client.completions.create(**settings, stream=True))

    assert completion.choices[0].text == whole[: whole.index(stop)]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens <= 4
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole[: whole.index(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"


# --- chat completions ----------------------------------------------------------------------------


def test_a_greedy_chat_equals_transformers_on_the_chat_templates_ids(
    client: openai.OpenAI, reference: Reference
) -> None:
    prompt = reference.chat_ids(MESSAGES)
    expected = reference.greedy_ids(prompt, MAX_TOKENS)
    dist = reference.logprobs(prompt + expected)

    chat = client.chat.completions.create(
        model=f"{E2E_OWNER}/{E2E_MODEL}", messages=MESSAGES, max_completion_tokens=MAX_TOKENS,
        temperature=0, logprobs=True, top_logprobs=2,
    )

    [choice] = chat.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == reference.text(expected)
    assert choice.finish_reason == reference.ended_by(expected)
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(prompt), len(expected))
    assert choice.logprobs is not None and choice.logprobs.content is not None
    shown = [token for token in expected if token not in reference.eos_ids]
    assert len(choice.logprobs.content) == len(shown)
    for j, entry in enumerate(choice.logprobs.content):
        step = dist[len(prompt) + j - 1]
        assert entry.logprob == pytest.approx(float(step[shown[j]]), abs=1e-4)
        assert bytes(entry.bytes or []) == entry.token.encode()
        top2 = torch.topk(step, 2).values.tolist()
        assert [alt.logprob for alt in entry.top_logprobs] == pytest.approx(top2, abs=1e-4)
    assert "".join(entry.token for entry in choice.logprobs.content) == choice.message.content


def test_a_streamed_chat_adds_up_to_the_whole_one(client: openai.OpenAI) -> None:
    settings = {"model": E2E_MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = client.chat.completions.create(**settings)

    chunks = list(
        client.chat.completions.create(
            **settings, stream=True, stream_options={"include_usage": True}
        )
    )

    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage


def test_litellms_openai_provider_gets_the_same_text(
    served: Served, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # read at its import: no network
    import litellm

    settings = {"messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    expected = client.chat.completions.create(model=E2E_MODEL, **settings).choices[0].message.content

    reply = litellm.completion(
        model=f"openai/{E2E_MODEL}", api_base=f"{served.api_url}/openai/v1", api_key="any", **settings
    )

    assert reply.choices[0].message.content == expected


def test_an_openai_request_and_an_lmtp_prediction_share_the_model(
    served: Served, client: openai.OpenAI, reference: Reference
) -> None:
    """Sent at once: both are served, by the one Cog server (its log names both predictions)."""
    prompt = reference.completion_ids("Once upon")
    ops = [["GENERATE", {"stream_id": 1, "prompt": prompt, "max_tokens": 8, "temperature": 0}]]

    def lmtp() -> dict[str, Any]:
        status, _, body = _post(
            served,
            f"/v1/models/{E2E_OWNER}/{E2E_MODEL}/predictions",
            {"input": {"ops_batch_json": json.dumps(ops)}},
        )
        assert status == 201
        return body

    def chat() -> Any:
        return client.chat.completions.with_raw_response.create(
            model=E2E_MODEL, messages=MESSAGES, max_tokens=8, temperature=0
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = pool.submit(lmtp), pool.submit(chat)
        prediction, raw_chat = (future.result(timeout=60) for future in sent)
    status, _, finished = _wait_for(served, prediction["id"])

    lines = "".join(finished["output"]).splitlines()
    tokens = [json.loads(line.removeprefix("TOKEN "))["token"] for line in lines]
    assert status == 200 and tokens == reference.greedy_ids(prompt, 8)
    answer = raw_chat.parse().choices[0].message.content
    assert answer == reference.text(reference.greedy_ids(reference.chat_ids(MESSAGES), 8))
    log = served.cog.log_path.read_text()
    assert prediction["id"] in log and "openai-" in log


def _wait_for(served: Served, prediction_id: str) -> tuple[int, dict[str, str], Any]:
    """The prediction, once it ended."""
    for _ in range(600):
        with urllib.request.urlopen(f"{served.api_url}/v1/predictions/{prediction_id}") as answer:
            body = json.loads(answer.read())
        if body["status"] in ("succeeded", "failed", "canceled"):
            return answer.status, dict(answer.headers), body
        time.sleep(0.05)
    raise AssertionError(f"{prediction_id} did not end")


# --- models and errors ---------------------------------------------------------------------------


def test_the_model_is_listed_and_found_by_name_or_owner_and_name(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [E2E_MODEL]
    assert client.models.retrieve(E2E_MODEL).owned_by == E2E_OWNER
    assert client.models.retrieve(f"anyone/{E2E_MODEL}").id == E2E_MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"model": "gpt-4o", "prompt": "Hi"}, 404, "model", "is not served here"),
        ({"model": E2E_MODEL}, 400, "prompt", "is required"),
        ({"model": E2E_MODEL, "prompt": "Hi", "temperature": 5}, 400, "temperature", "from 0 to 2"),
        ({"model": E2E_MODEL, "prompt": "Hi", "n": 2}, 400, "n", "must be 1"),
        ({"model": E2E_MODEL, "prompt": "Hi", "logprobs": 50}, 400, "logprobs", "from 0 to 20"),
        ({"model": E2E_MODEL, "prompt": "Hi", "stop": 5}, 400, "stop", "a string or a list"),
        ({"model": E2E_MODEL, "prompt": "Hello " * 300}, 400, "prompt", "context window of 256"),
        ({"model": E2E_MODEL, "prompt": "Hi", "logit_bias": {"99999": 5}}, 400, "logit_bias", "99999"),
    ],
)
def test_a_bad_completion_gets_openais_error_naming_the_field(
    served: Served, body: dict[str, Any], status: int, param: str, words: str
) -> None:
    got, headers, answer = _post(served, "/openai/v1/completions", body)

    assert got == status, answer
    assert headers["Content-Type"] == "application/json"
    error = answer["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": E2E_MODEL, "messages": []}, "messages"),
        ({"model": E2E_MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": E2E_MODEL, "messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        ({"model": E2E_MODEL, "messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_a_bad_chat_gets_openais_error_naming_the_field(
    served: Served, body: dict[str, Any], param: str
) -> None:
    status, _, answer = _post(served, "/openai/v1/chat/completions", body)

    assert status == 400 and answer["error"]["param"] == param, answer


def test_the_openai_client_raises_the_servers_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'temperature' must be from 0 to 2"):
        client.chat.completions.create(model=E2E_MODEL, messages=MESSAGES, temperature=3)


# --- how ./serve presents it ---------------------------------------------------------------------


def test_the_banners_openai_snippets_run_as_printed(served: Served, built_project: Path) -> None:
    text = banner(served, project_dir=built_project, startup_seconds=1.0)
    python = banner_snippet(text, "OpenAI Python client")
    curl = banner_snippet(text, "OpenAI-compatible API with curl")

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(python, {})
    ran = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)

    assert f"OpenAI-compatible API     {served.api_url}/openai/v1" in text
    assert printed.getvalue().strip()  # the model's answer (sampled: OpenAI's default is T = 1)
    [choice] = json.loads(ran.stdout)["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
