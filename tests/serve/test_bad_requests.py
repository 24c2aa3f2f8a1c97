"""Requests the Replicate-compatible API cannot use get a 4xx with a one-sentence JSON detail.

Against the real stack: ./serve's API in front of the real Cog server with the echo model. Each
malformed request is sent as raw bytes where the point is the wire (a Content-Length that is no
number, a body shorter than it says), else with ``http.client``. After each, the server still
answers. Then a bounded fuzz run (hypothesis) sends random JSON bodies and inputs to both creation
routes: every answer must be a 2xx or a 4xx, in JSON.

The fuzz run is small and derandomised in the suite (``FUZZ_EXAMPLES``, default 100, runs in about
two seconds); for a longer one:

    FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest -q tests/serve/test_bad_requests.py -k fuzz
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtp_cog.serve.service import Served, serve_project
from tests.support.served_projects import ECHO_MODEL

MODEL_ROUTE = f"/v1/models/someone/{ECHO_MODEL}/predictions"
MODEL_INFO = json.dumps([["MODEL_INFO", {"stream_id": 1}]])
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def served(work_dir: Path) -> Iterator[Served]:
    with serve_project(work_dir / ECHO_MODEL, port=0, lmtp_port=None) as served:
        yield served


def _address(served: Served) -> tuple[str, int]:
    url = urllib.parse.urlsplit(served.api_url)
    return str(url.hostname), int(url.port or 80)


def _raw(served: Served, request: bytes, *, close_write: bool = False) -> tuple[int, dict, Any]:
    """Send ``request`` as it is; the status, headers and JSON body of the answer."""
    with socket.create_connection(_address(served), timeout=30) as sock:
        sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode())
        response.begin()
        body = response.read()
    return response.status, dict(response.getheaders()), json.loads(body) if body else None


def _send(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, Any]:
    connection = http.client.HTTPConnection(*_address(served), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), json.loads(data) if data else None
    finally:
        connection.close()


def _post_json(served: Served, body: Any, path: str = MODEL_ROUTE) -> tuple[int, dict, Any]:
    data = json.dumps(body).encode()
    return _send(served, "POST", path, data, {"Content-Type": "application/json"})


def _assert_problem(answer: tuple[int, dict, Any], status: int, *words: str) -> None:
    """A JSON problem with that status, whose detail is one sentence holding ``words``."""
    got, headers, body = answer
    assert got == status, body
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == status and isinstance(body["title"], str)
    detail = body["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, detail
    for word in words:
        assert word in detail, detail


def _still_serves(served: Served) -> None:
    status, _, prediction = _send(
        served,
        "POST",
        MODEL_ROUTE,
        json.dumps({"input": {"ops_batch_json": MODEL_INFO}}).encode(),
        {"Content-Type": "application/json", "Prefer": "wait"},
    )
    assert status == 201 and prediction["status"] == "succeeded", prediction


# --- the body on the wire ------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "+5", " ", "٣"])
def test_a_content_length_that_is_no_size_is_a_400(served: Served, length: str) -> None:
    request = f"POST {MODEL_ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}"
    answer = _raw(served, request.encode())

    _assert_problem(answer, 400, "Content-Length")
    assert answer[1]["Connection"] == "close"
    _still_serves(served)


def test_content_lengths_that_disagree_are_a_400(served: Served) -> None:
    request = (
        f"POST {MODEL_ROUTE} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    )
    _assert_problem(_raw(served, request.encode()), 400, "Content-Length headers that disagree")


def test_a_body_shorter_than_its_content_length_is_a_400(served: Served) -> None:
    request = f"POST {MODEL_ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{}}"
    answer = _raw(served, request.encode(), close_write=True)

    _assert_problem(answer, 400, "ended after 2 of the 100 bytes")
    _still_serves(served)


def test_a_huge_body_is_refused_unread_with_413(served: Served) -> None:
    request = f"POST {MODEL_ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: {2**40}\r\n\r\n"
    _assert_problem(_raw(served, request.encode()), 413, str(2**40), "at most")


def test_a_chunked_body_is_a_411(served: Served) -> None:
    request = (
        f"POST {MODEL_ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\n{}\r\n0\r\n\r\n"
    )
    _assert_problem(_raw(served, request.encode()), 411, "Content-Length")


def test_a_malformed_request_line_gets_a_json_400(served: Served) -> None:
    _assert_problem(_raw(served, b"POST /v1/predictions HTTP/1.x\r\n\r\n"), 400, "version")


# --- the JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", ["no body"]),
        (b"{not json", ["not JSON"]),
        (b"\xff\xfe{}", ["not JSON"]),
        (b"[1, 2]", ["must be a JSON object"]),
        (b'"input"', ["must be a JSON object"]),
        (b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
    ],
)
def test_a_body_that_is_no_json_object_is_a_400(
    served: Served, body: bytes, words: list[str]
) -> None:
    for path in (MODEL_ROUTE, "/v1/predictions"):
        answer = _send(served, "POST", path, body, {"Content-Type": "application/json"})
        _assert_problem(answer, 400, *words)


@pytest.mark.parametrize("inputs", [None, [], "text", 5, ["ops_batch_json"]])
def test_an_input_that_is_no_object_is_a_422(served: Served, inputs: Any) -> None:
    _assert_problem(_post_json(served, {"input": inputs}), 422, "'input' must be a JSON object")


def test_an_unpaired_surrogate_in_an_input_is_a_422_that_names_it(served: Served) -> None:
    body = b'{"input": {"ops_batch_json": "[]", "prompt": "half a pair: \\ud800"}}'

    answer = _send(served, "POST", MODEL_ROUTE, body, {"Content-Type": "application/json"})

    _assert_problem(answer, 422, "input 'prompt' holds an unpaired surrogate")
    _still_serves(served)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_an_input_is_a_422_that_names_it(served: Served, number: str) -> None:
    body = f'{{"input": {{"ops_batch_json": "[]", "temperature": [1, {number}]}}}}'.encode()

    answer = _send(served, "POST", MODEL_ROUTE, body, {"Content-Type": "application/json"})

    _assert_problem(answer, 422, f"input 'temperature' holds {number}")


def test_an_input_nested_deeper_than_cog_reads_is_a_422(served: Served) -> None:
    deep: Any = "bottom"
    for _ in range(120):
        deep = [deep]

    answer = _post_json(served, {"input": {"ops_batch_json": "[]", "extra": deep}})

    _assert_problem(answer, 422, "input 'extra' is nested more than 100 levels deep")


def test_an_input_cogs_json_cannot_read_is_a_422(served: Served) -> None:
    """A number beyond a 64-bit float: Python's JSON reads it, Cog's refuses the request."""
    body = b'{"input": {"ops_batch_json": "[]", "big": ' + b"9" * 400 + b"}}"

    answer = _send(served, "POST", MODEL_ROUTE, body, {"Content-Type": "application/json"})

    _assert_problem(answer, 422, "the Cog server cannot take this input")
    _still_serves(served)


# --- routes and methods --------------------------------------------------------------------------


def test_an_unknown_path_is_a_404(served: Served) -> None:
    _assert_problem(_send(served, "GET", "/v2/whatever"), 404, "no route for GET /v2/whatever")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/predictions", "POST"),
        ("PUT", MODEL_ROUTE, "POST"),
        ("DELETE", "/v1/predictions/abc", "GET"),
        ("POST", f"/v1/models/someone/{ECHO_MODEL}", "GET"),
        ("BREW", "/v1/predictions", "POST"),
    ],
)
def test_a_method_a_route_does_not_answer_is_a_405(
    served: Served, method: str, path: str, allowed: str
) -> None:
    answer = _send(served, method, path)

    _assert_problem(answer, 405, f"not {method}")
    assert answer[1]["Allow"] == allowed


def test_a_head_request_gets_the_headers_without_a_body(served: Served) -> None:
    status, headers, body = _send(served, "HEAD", f"/v1/models/someone/{ECHO_MODEL}")

    assert status == 405 and headers["Allow"] == "GET" and body is None
    assert int(headers["Content-Length"]) > 0
    _still_serves(served)


# --- the OpenAI-compatible API's errors --------------------------------------------------------


def _assert_openai_error(answer: tuple[int, dict, Any], status: int, *words: str) -> None:
    """OpenAI's error shape with that status, whose message is one sentence holding ``words``."""
    got, headers, body = answer
    assert got == status, body
    assert headers["Content-Type"] == "application/json"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert "\n" not in error["message"]
    for word in words:
        assert word in error["message"], error


def test_the_openai_api_of_a_model_without_a_tokenizer_says_why(served: Served) -> None:
    """The echo model has no checkpoint: listing works, generating is a 503 naming the folder."""
    status, _, models = _send(served, "GET", "/openai/v1/models")
    body = {"model": ECHO_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    answer = _post_json(served, body, "/openai/v1/chat/completions")

    assert status == 200 and [model["id"] for model in models["data"]] == [ECHO_MODEL]
    _assert_openai_error(answer, 503, "needs the model's tokenizer", "checkpoints", "./build")
    _still_serves(served)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("GET", "/openai/v1/nowhere", None, 404, ["no route for GET /openai/v1/nowhere"]),
        ("GET", "/openai/v1/completions", None, 405, ["answers POST, not GET"]),
        ("POST", "/openai/v1/completions", b"{not json", 400, ["not JSON"]),
        ("POST", "/openai/v1/completions", b"[]", 400, ["must be a JSON object"]),
        ("POST", "/openai/v1/completions", b'{"prompt": "hi"}', 400, ["'model' is required"]),
    ],
)
def test_openai_paths_answer_errors_in_openais_shape(
    served: Served, method: str, path: str, body: bytes | None, status: int, words: list[str]
) -> None:
    answer = _send(served, method, path, body, {"Content-Type": "application/json"})

    _assert_openai_error(answer, status, *words)


def test_a_chunked_openai_request_gets_a_411_in_openais_shape(served: Served) -> None:
    request = (
        "POST /openai/v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\n{}\r\n0\r\n\r\n"
    )
    _assert_openai_error(_raw(served, request.encode()), 411, "Content-Length")


# --- a bounded fuzz run --------------------------------------------------------------------------

_ODD = st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "a\rb", "\r\n", "\u2028", "\ufeff", "\U0001f600", "", " "]
    + [float("nan"), float("inf"), -float("inf"), 10**400, -(2**64), 1e308, 5e-324]
)
"""What JSON readers disagree on: lone surrogates, control and line-break characters, NaN and
infinities, integers beyond 64 bits or any float."""
_SCALARS = (
    _ODD
    | st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    # Every code point, lone surrogates included: the body is sent as ASCII JSON with escapes.
    | st.text(st.characters(exclude_categories=()), max_size=30)
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
_INPUT_NAMES = st.sampled_from(["ops_batch_json", "prompt", ""]) | st.text(max_size=8)
_INPUTS = st.dictionaries(_INPUT_NAMES, _JSON, max_size=4) | _JSON
_OPS = st.just(MODEL_INFO) | _TEXT


@st.composite
def _bodies(draw: st.DrawFn) -> Any:
    """A request body: any JSON, or an object with an ``input`` that is anything, or close to
    what the model takes (so that many are accepted, and run); with or without a ``version``."""
    kind = draw(st.sampled_from(["json", "input", "near-valid", "near-valid"]))
    if kind == "json":
        return draw(_JSON)
    if kind == "input":
        body: dict[str, Any] = {"input": draw(_INPUTS)}
    else:
        prompt = draw(_TEXT | _SCALARS)
        body = {"input": {"ops_batch_json": draw(_OPS), "prompt": prompt, **draw(_INPUTS.filter(
            lambda extra: isinstance(extra, dict)))}}
    version = draw(st.sampled_from(["served", "random", "none"]))
    if version == "served":
        body["version"] = f"someone/{ECHO_MODEL}"
    elif version == "random":
        body["version"] = draw(_JSON)
    return body


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_bodies(), path=st.sampled_from([MODEL_ROUTE, "/v1/predictions"]))
def test_fuzz_every_answer_to_a_random_body_is_json_and_no_5xx(
    served: Served, body: Any, path: str
) -> None:
    data = json.dumps(body).encode()  # NaN as NaN, surrogates as \ud800: what Python reads

    status, headers, answer = _send(
        served, "POST", path, data, {"Content-Type": "application/json"}
    )

    assert 200 <= status < 300 or 400 <= status < 500, (status, answer)
    assert headers["Content-Type"] in ("application/json", "application/problem+json")
    assert isinstance(answer, dict)
    if status >= 400:
        assert isinstance(answer["detail"], str) and "\n" not in answer["detail"]


@settings(
    max_examples=max(1, FUZZ_EXAMPLES // 4),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=200) | _JSON.map(lambda value: json.dumps(value)[:-1].encode()))
def test_fuzz_a_body_of_random_bytes_is_a_400(served: Served, data: bytes) -> None:
    """Any bytes, and JSON cut short by its last character."""
    headers = {"Content-Type": "application/json"}

    status, _, answer = _send(served, "POST", MODEL_ROUTE, data, headers)

    assert status == 400 or (status in (201, 422) and _is_json_object(data)), (status, answer)
    assert isinstance(answer, dict) and "\n" not in answer["detail"]


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


def test_after_the_fuzz_run_the_server_still_serves(served: Served) -> None:
    _still_serves(served)
