"""A local stand-in for Replicate's HTTP API, in front of one Cog server.

Clients written for ``https://api.replicate.com`` (the ``replicate`` Python client, LMQL's
Replicate backend, curl) talk to it unchanged but for the base URL. It serves one model, under
``OWNER/NAME`` for any OWNER (so ``r8.im/ACCOUNT/NAME``'s own name works before the model is
pushed), and implements the part of the API those clients use:

    GET  /v1/models/OWNER/NAME                      the model, with ``latest_version``
    GET  /v1/models/OWNER/NAME/versions[/ID]        its one version (with the OpenAPI schema)
    POST /v1/predictions                            ``{"version": ..., "input": {...}}``
    POST /v1/models/OWNER/NAME/predictions          ``{"input": {...}}``
    POST /v1/models/OWNER/NAME/versions/ID/predictions
    POST /v1/deployments/OWNER/NAME/predictions     ``{"input": {...}}``
    GET  /v1/predictions/ID                         the prediction
    POST /v1/predictions/ID/cancel                  cancel it
    GET  /v1/predictions/ID/stream                  its server-sent events (``urls.stream``)

Creating a prediction answers 201 once Cog has accepted the input (422 with Cog's reasons when it
does not), or, with ``Prefer: wait[=N]``, once the prediction ended or N seconds (at most 60)
passed. Any ``Authorization`` header is accepted, and none is required: the server is meant for
127.0.0.1. Webhooks are not sent.

Every error answer is a JSON problem (``{"title", "detail", "status"}``, the detail one sentence),
and a request the server cannot use is the client's error, a 4xx, never a 5xx: an unreadable
``Content-Length`` or a body shorter than it (400), a chunked body (411), one over 64 MiB (413)
or slow to come (408), a body that is not a JSON object (400), an ``input`` that is not an object
or holds what Cog cannot be sent, such as an unpaired surrogate or ``NaN`` (422), an unknown path
(404) or method (405). A 5xx means Cog failed (502) or is gone (503), or a bug here (500).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import secrets
import socket
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .prediction import Prediction
from .project import ServedModel
from .runner import CogDown, CogRefused, PredictionRunner
from .sse import KEEPALIVE, format_event

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
"""Replicate's limit for ``Prefer: wait=N``; a bare ``Prefer: wait`` means this many."""

CANCEL_WAIT_SECONDS = 5.0
"""How long a cancel request waits for Cog to confirm, so that it can answer ``canceled``."""

MAX_BODY_BYTES = 64 * 2**20
"""The largest request body taken, as for the websocket's commands: an LMQL call carries the
prompt and a ``logit_bias`` mask that can cover much of the vocabulary."""

MAX_INPUT_DEPTH = 100
"""How deep a prediction's input may nest: Cog's JSON parser stops at 128 levels, the request
around the input included."""

BODY_TIMEOUT_SECONDS = 30.0
"""How long a request's body may take to arrive once its headers did."""

LINGER_SECONDS = 1.0
LINGER_BYTES = 2**20
"""How long, and how much, a connection closed on a bad request reads what the client still
sends, so that the client gets the answer (see ``_Handler._linger``)."""

KEPT_PREDICTIONS = 1000
"""Finished predictions kept for ``GET``; older ones are forgotten (LMQL makes very many)."""

_SEGMENT = r"([^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern.replace("{}", _SEGMENT) + "/?"), handler)
    for method, pattern, handler in [
        ("GET", "/v1/models/{}/{}", "get_model"),
        ("GET", "/v1/models/{}/{}/versions", "list_versions"),
        ("GET", "/v1/models/{}/{}/versions/{}", "get_version"),
        ("POST", "/v1/predictions", "create_prediction"),
        ("POST", "/v1/models/{}/{}/predictions", "create_model_prediction"),
        ("POST", "/v1/models/{}/{}/versions/{}/predictions", "create_version_prediction"),
        ("POST", "/v1/deployments/{}/{}/predictions", "create_model_prediction"),
        ("GET", "/v1/predictions/{}", "get_prediction"),
        ("POST", "/v1/predictions/{}/cancel", "cancel_prediction"),
        ("GET", "/v1/predictions/{}/stream", "stream_prediction"),
    ]
]


class ApiError(Exception):
    """An error answer, in Replicate's shape: ``{"title", "detail", "status"}``.

    ``headers`` go with the answer; ``close`` ends the connection after it (when the request's
    body could not be read, the connection's next bytes cannot be trusted).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"title": title, "detail": detail, "status": status, **extra}
        self.headers = headers or {}
        self.close = close


class ReplicateApi:
    """What the request handlers share: the model, its predictions and the runner."""

    def __init__(self, model: ServedModel, runner: PredictionRunner) -> None:
        self.model = model
        self.runner = runner
        self.stopping = threading.Event()
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._created = 0
        self._lock = threading.Lock()

    def add(self, prediction: Prediction) -> None:
        with self._lock:
            self._predictions[prediction.id] = prediction
            self._created += 1
            finished = [p.id for p in self._predictions.values() if p.done]
            for prediction_id in finished[: max(0, len(finished) - KEPT_PREDICTIONS)]:
                del self._predictions[prediction_id]

    def get(self, prediction_id: str) -> Prediction:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
        if prediction is None:
            raise ApiError(404, "Not found", f"there is no prediction {prediction_id!r}")
        return prediction

    def check_model(self, owner: str, name: str) -> str:
        """``OWNER/NAME`` as the client wrote it, if NAME is the served model's."""
        if name != self.model.name:
            raise ApiError(
                404,
                "Not found",
                f"model {owner}/{name} is not served here; this server serves "
                f"{self.model.ref} (any owner works)",
            )
        return f"{owner}/{name}"

    def check_version(self, version: Any) -> str:
        """The model ``OWNER/NAME`` a ``version`` field designates.

        Accepts the version id, ``OWNER/NAME:ID`` and ``OWNER/NAME`` (the latest version).
        """
        if not isinstance(version, str) or not version:
            raise ApiError(422, "Invalid version", "the request needs a 'version' string")
        model_ref, has_colon, version_id = version.rpartition(":")
        if not has_colon and "/" in version:
            model_ref, version_id = version, self.model.version_id
        if version_id != self.model.version_id:
            raise ApiError(
                422,
                "Invalid version or not permitted",
                f"version {version!r} is not served here; the served version is "
                f"{self.model.version_id}",
            )
        if model_ref:
            owner, _, name = model_ref.partition("/")
            return self.check_model(owner, name)
        return self.model.ref

    def version_json(self) -> dict[str, Any]:
        from cog import __version__ as cog_version

        return {
            "id": self.model.version_id,
            "created_at": self.model.created_at,
            "cog_version": cog_version,
            "openapi_schema": self.model.openapi_schema,
        }

    def model_json(self, owner: str, name: str) -> dict[str, Any]:
        return {
            "url": f"https://replicate.com/{owner}/{name}",
            "owner": owner,
            "name": name,
            "description": "served locally by lmtp-cog ./serve",
            "visibility": "private",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": self._created,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": self.version_json(),
        }


class ReplicateApiServer(ThreadingHTTPServer):
    """The HTTP server; one thread per connection, none of which keeps the process alive."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ReplicateApi) -> None:
        self.api = api
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        """Stop accepting requests, end open streams and cancel what is left on Cog."""
        self.api.stopping.set()
        super().shutdown()
        self.api.runner.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; on a kept-alive connection Nagle's algorithm would hold
    # the body back for the client's delayed ACK (40 ms per request, measured with httpx).
    disable_nagle_algorithm = True
    # What a request line too broken to name its version gets: a status line (the stdlib's
    # HTTP/0.9 default answers with the bare body, which no client reads as an error).
    default_request_version = "HTTP/1.0"
    server: ReplicateApiServer
    _body: bytes = b""
    _responded: bool = False

    # --- plumbing --------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # The stdlib answers a method without a ``do_METHOD`` with 501 and an HTML page; every
        # method is routed here instead, so that one it does not serve gets a JSON 405.
        if name.startswith("do_") and name[3:]:
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self._responded = False
        try:
            # Read the whole body first, whatever the route: on a kept-alive connection, unread
            # bytes would be taken for the next request.
            self._body = self._read_body()
            allowed = []
            for route_method, pattern, handler in _ROUTES:
                match = pattern.fullmatch(path)
                if match and route_method == method:
                    getattr(self, handler)(*match.groups())
                    return
                if match:
                    allowed.append(route_method)
            if allowed:
                raise ApiError(
                    405,
                    "Method not allowed",
                    f"{path} answers {' and '.join(sorted(set(allowed)))}, not {method}",
                    headers={"Allow": ", ".join(sorted(set(allowed)))},
                )
            raise ApiError(404, "Not found", f"no route for {method} {path}")
        except ApiError as error:
            if error.close:
                self.close_connection = True
            self._send_json(error.status, error.body, error.headers)
            if error.close:
                self._linger()
        except Exception:
            log.exception("%s %s failed", method, path)
            self.close_connection = True
            if not self._responded:
                internal = ApiError(500, "Internal error", "see the log of ./serve")
                self._send_json(internal.status, internal.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (a malformed request line or header), as JSON problems."""
        short, long = self.responses.get(code, ("Error", ""))
        self.log_error("code %d, message %s", code, message or short)
        self.close_connection = True
        detail = (explain or message or long or short).rstrip(".")
        self._send_json(code, ApiError(code, short, detail).body, {"Connection": "close"})

    def _linger(self) -> None:
        """Take what the client still sends (at most :data:`LINGER_BYTES`, for at most
        :data:`LINGER_SECONDS`) before the connection closes: a socket closed with unread bytes
        resets the connection, which can destroy the answer before the client has read it."""
        self.wfile.flush()
        taken = 0
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            while taken < LINGER_BYTES and (chunk := self.connection.recv(65536)):
                taken += len(chunk)
        except OSError:
            pass  # the client is gone, or slow: close anyway

    @property
    def api(self) -> ReplicateApi:
        return self.server.api

    @property
    def base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.url

    def _read_body(self) -> bytes:
        """The request's body, all of it (``Content-Length`` bytes).

        Raises:
            ApiError: 411 for a chunked body, 400 for a Content-Length that is no size or a body
                that ends before it, 413 for one over :data:`MAX_BODY_BYTES`, 408 for one that
                does not arrive within :data:`BODY_TIMEOUT_SECONDS`; each closes the connection,
                whose next bytes could not be told apart from this body.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(
                411, "Length required", "send the body with a Content-Length header", close=True
            )
        length = _content_length(self.headers.get_all("Content-Length") or [])
        if length > MAX_BODY_BYTES:
            raise ApiError(
                413,
                "Payload too large",
                f"the body has {length} bytes; this server takes at most {MAX_BODY_BYTES}",
                close=True,
            )
        if length == 0:
            return b""
        self.connection.settimeout(BODY_TIMEOUT_SECONDS)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise ApiError(
                408,
                "Request timeout",
                f"the body did not arrive within {BODY_TIMEOUT_SECONDS:.0f} s",
                close=True,
            ) from None
        finally:
            self.connection.settimeout(None)
        if len(body) < length:
            raise ApiError(
                400,
                "Bad request",
                f"the body ended after {len(body)} of the {length} bytes its Content-Length says",
                close=True,
            )
        return body

    def _read_json(self) -> dict[str, Any]:
        if not self._body.strip():
            raise ApiError(
                400, "Bad request", 'the request has no body: send a JSON object {"input": {...}}'
            )
        try:
            body = json.loads(self._body)
        except RecursionError:
            raise ApiError(400, "Bad request", "the body is nested too deeply") from None
        except ValueError as error:
            raise ApiError(400, "Bad request", f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Bad request", "the body must be a JSON object")
        return body

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._responded = True
        self.send_response(status)
        content_type = "application/problem+json" if status >= 400 else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        headers = dict(headers or {})
        if self.close_connection:
            headers.setdefault("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the body, not the body
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    # --- models ----------------------------------------------------------------------------------

    def get_model(self, owner: str, name: str) -> None:
        self.api.check_model(owner, name)
        self._send_json(200, self.api.model_json(owner, name))

    def list_versions(self, owner: str, name: str) -> None:
        self.api.check_model(owner, name)
        page = {"next": None, "previous": None, "results": [self.api.version_json()]}
        self._send_json(200, page)

    def get_version(self, owner: str, name: str, version_id: str) -> None:
        self.api.check_model(owner, name)
        self.api.check_version(version_id)
        self._send_json(200, self.api.version_json())

    # --- predictions -----------------------------------------------------------------------------

    def create_prediction(self) -> None:
        body = self._read_json()
        self._create(self.api.check_version(body.get("version")), body)

    def create_model_prediction(self, owner: str, name: str) -> None:
        model = self.api.check_model(owner, name)
        self._create(model, self._read_json())

    def create_version_prediction(self, owner: str, name: str, version_id: str) -> None:
        model = self.api.check_model(owner, name)
        self.api.check_version(version_id)
        self._create(model, self._read_json())

    def _create(self, model: str, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            raise ApiError(422, "Input validation failed", "'input' must be a JSON object")
        problem = input_problem(inputs)
        if problem is not None:
            raise ApiError(422, "Input validation failed", problem)
        prediction = Prediction(
            id=_new_prediction_id(), model=model, version=self.api.model.version_id, input=inputs
        )
        try:
            self.api.runner.submit(prediction)
        except CogRefused as refused:
            raise _refusal_error(refused) from None
        except CogDown as down:
            raise ApiError(503, "Model unavailable", str(down)) from None
        except OSError as error:
            raise ApiError(
                503, "Model unavailable", f"the Cog server cannot be reached: {error}"
            ) from None
        self.api.add(prediction)
        wait = _preferred_wait(self.headers.get("Prefer", ""))
        headers = {}
        if wait:
            prediction.wait(timeout=wait)
            headers["Preference-Applied"] = f"wait={wait}"
        self._send_json(201, prediction.to_json(self.base_url), headers)

    def get_prediction(self, prediction_id: str) -> None:
        self._send_json(200, self.api.get(prediction_id).to_json(self.base_url))

    def cancel_prediction(self, prediction_id: str) -> None:
        prediction = self.api.get(prediction_id)
        self.api.runner.cancel(prediction)
        prediction.wait(timeout=CANCEL_WAIT_SECONDS)
        self._send_json(200, prediction.to_json(self.base_url))

    def stream_prediction(self, prediction_id: str) -> None:
        prediction = self.api.get(prediction_id)
        try:
            after = max(-1, int(self.headers.get("Last-Event-ID", "-1")))
        except ValueError:
            after = -1
        self._responded = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in prediction.follow(after=after, stop=self.api.stopping):
                self.wfile.write(KEEPALIVE if event is None else format_event(event))
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("a client left the stream of %s", prediction_id)


def _new_prediction_id() -> str:
    """26 lowercase letters and digits, like Replicate's ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _preferred_wait(prefer: str) -> int:
    """Seconds to wait for a ``Prefer`` header: ``wait`` 60, ``wait=N`` N (1 to 60), else 0."""
    match = re.search(r"(?:^|[,;\s])wait(?:=(\d+))?(?:$|[,;\s])", prefer)
    if not match:
        return 0
    digits = match.group(1) or str(MAX_WAIT_SECONDS)
    seconds = int(digits) if len(digits) <= 4 else MAX_WAIT_SECONDS  # int() refuses 4300 digits
    return max(1, min(MAX_WAIT_SECONDS, seconds))


def _content_length(values: list[str]) -> int:
    """The body's size from its ``Content-Length`` header(s); 0 without one.

    Raises:
        ApiError: 400 for a value that is no size, or several that disagree (RFC 9112 6.3).
    """
    sizes = {value.strip() for value in values}
    if not sizes:
        return 0
    if len(sizes) > 1:
        raise ApiError(
            400, "Bad request", "the request has Content-Length headers that disagree", close=True
        )
    (size,) = sizes
    if not size.isascii() or not size.isdigit() or len(size) > 18:
        raise ApiError(
            400,
            "Bad request",
            f"Content-Length {size[:40]!r} is not a number of bytes",
            close=True,
        )
    return int(size)


def input_problem(inputs: dict[str, Any]) -> str | None:
    """Why Cog could not be sent ``inputs``, naming the input; ``None`` if it can be.

    Python's JSON reads what JSON text cannot carry, so a request may hold it: an escaped
    unpaired surrogate (``"\\ud800"``) or ``NaN``/``Infinity``. Written out for Cog, either makes
    its JSON parser refuse the whole request (a 400 that names no input), as does nesting deeper
    than its limit (128 levels).
    """
    for name in inputs:
        if _has_surrogate(name):
            return f"an input name, {_quoted(name)}, holds an unpaired surrogate; send valid text"
    pending: list[tuple[str, int, Any]] = [(name, 1, value) for name, value in inputs.items()]
    while pending:  # no recursion: the input may be nested thousands deep
        name, depth, value = pending.pop()
        if depth > MAX_INPUT_DEPTH:
            return f"input {_quoted(name)} is nested more than {MAX_INPUT_DEPTH} levels deep"
        if isinstance(value, dict):
            pending += [(name, depth, key) for key in value]
            pending += [(name, depth + 1, item) for item in value.values()]
        elif isinstance(value, list):
            pending += [(name, depth + 1, item) for item in value]
        elif isinstance(value, str) and _has_surrogate(value):
            return (
                f"input {_quoted(name)} holds an unpaired surrogate (an escape such as \\ud800 "
                "that is half of a UTF-16 pair), which is no Unicode text; send valid text"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            spelled = "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
            return (
                f"input {_quoted(name)} holds {spelled}, which JSON has no number for; "
                "send a finite number"
            )
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    # At C speed: an LMQL op can be megabytes of JSON text.
    return not text.isascii() and _SURROGATE.search(text) is not None


def _quoted(name: str) -> str:
    """An input's name for a message: quoted, escaped as JSON (it may hold anything)."""
    return "'" + json.dumps(name[:60])[1:-1] + ("…" if len(name) > 60 else "") + "'"


def _refusal_error(refused: CogRefused) -> ApiError:
    """Cog's refusal as Replicate words it: for a 422, a one-line ``detail`` and the fields.

    Cog answers 400 when it cannot parse the request we wrote from the client's input (its
    parser is stricter than Python's, e.g. about nesting depth or huge numbers): the input is at
    fault, so that is a 422 too. Any other answer is Cog's own failure (502).
    """
    problems = refused.body.get("detail") if isinstance(refused.body, dict) else None
    if refused.status in (400, 413):
        return ApiError(
            422 if refused.status == 400 else 413,
            "Input validation failed",
            f"the Cog server cannot take this input: {_cog_error_text(refused.body)}",
        )
    if refused.status != 422 or not isinstance(problems, list):
        return ApiError(
            502, "Model error", f"the Cog server answered {refused.status}: {refused.body}"
        )
    fields = [
        {
            "field": ".".join(str(part) for part in problem.get("loc", [])[1:]),
            "description": problem.get("msg", ""),
            "type": problem.get("type", ""),
        }
        for problem in problems
        if isinstance(problem, dict)
    ]
    detail = "; ".join(f"{field['field']}: {field['description']}" for field in fields)
    return ApiError(422, "Input validation failed", detail, invalid_fields=fields)


def _cog_error_text(body: Any) -> str:
    """The reason in one of Cog's error answers: ``{"detail": ...}``, ``{"error": ...}`` or text."""
    if isinstance(body, dict):
        body = body.get("detail") or body.get("error") or body
    return " ".join(str(body).split())[:300]  # one line, whatever Cog wrote
