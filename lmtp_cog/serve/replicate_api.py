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

Each path also answers with a trailing slash. Creating a prediction answers 201 once Cog has
accepted the input (422 with Cog's reasons when it does not), or, with ``Prefer: wait[=N]``, once
the prediction ended or N seconds (at most 60) passed. Any ``Authorization`` header is accepted,
and none is required: the server is meant for 127.0.0.1. Webhooks are not sent.

Every error answer is a JSON problem (``{"title", "detail", "status"}``, the detail one sentence,
see :mod:`.problems`), and a request the server cannot use is the client's error, a 4xx, never a
5xx: an unreadable ``Content-Length`` or a body shorter than it (400), a chunked body (411), one
over 64 MiB (413) or slow to come (408) (:mod:`.request_body`, :mod:`.http_server`), a body that
is not a JSON object (400), an ``input`` that is not an object or holds what Cog cannot be sent,
such as an unpaired surrogate or ``NaN`` (422), an unknown path (404) or method (405,
:mod:`.middleware`). A 5xx means Cog failed (502) or is gone (503), or a bug here (500).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import secrets
from collections import OrderedDict
from typing import Any

from aiohttp import web

from .errors import CogRefused, CogUnreachable
from .prediction import Prediction
from .problems import ApiError, json_response
from .project import ServedModel
from .request_body import BODY, read_json_object
from .runner import PredictionRunner
from .sse import KEEPALIVE, format_event

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
"""Replicate's limit for ``Prefer: wait=N``; a bare ``Prefer: wait`` means this many."""

CANCEL_WAIT_SECONDS = 5.0
"""How long a cancel request waits for Cog to confirm, so that it can answer ``canceled``."""

MAX_INPUT_DEPTH = 100
"""How deep a prediction's input may nest: Cog's JSON parser stops at 128 levels, the request
around the input included."""

KEPT_PREDICTIONS = 1000
"""Finished predictions kept for ``GET``; older ones are forgotten (LMQL makes very many)."""

OPTIONAL_SLASH = "{slash:/?}"
"""Ends every path: each route also answers with a trailing slash."""

BODY_HINT = '{"input": {...}}'


class ReplicateApi:
    """The Replicate-compatible routes of one served model: its predictions and the runner."""

    def __init__(
        self, model: ServedModel, runner: PredictionRunner, *, stopping: asyncio.Event
    ) -> None:
        self.model = model
        self.runner = runner
        self.stopping = stopping
        """Set when the server goes away: streams and waits end."""
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._created = 0

    def routes(self) -> list[web.RouteDef]:
        """Every route, as the module docstring lists them."""
        return [
            _get_route("/v1/models/{owner}/{name}", self.get_model),
            _get_route("/v1/models/{owner}/{name}/versions", self.list_versions),
            _get_route("/v1/models/{owner}/{name}/versions/{version}", self.get_version),
            _post_route("/v1/predictions", self.create_prediction),
            _post_route("/v1/models/{owner}/{name}/predictions", self.create_model_prediction),
            _post_route(
                "/v1/models/{owner}/{name}/versions/{version}/predictions",
                self.create_version_prediction,
            ),
            _post_route("/v1/deployments/{owner}/{name}/predictions", self.create_model_prediction),
            _get_route("/v1/predictions/{id}", self.get_prediction),
            _post_route("/v1/predictions/{id}/cancel", self.cancel_prediction),
            _get_route("/v1/predictions/{id}/stream", self.stream_prediction),
        ]

    # --- models ----------------------------------------------------------------------------------

    async def get_model(self, request: web.Request) -> web.Response:
        owner, name = self._model_of(request)
        return json_response(200, self.model_json(owner, name))

    async def list_versions(self, request: web.Request) -> web.Response:
        self._model_of(request)
        page = {"next": None, "previous": None, "results": [self.version_json()]}
        return json_response(200, page)

    async def get_version(self, request: web.Request) -> web.Response:
        self._model_of(request)
        self.check_version(request.match_info["version"])
        return json_response(200, self.version_json())

    # --- predictions -----------------------------------------------------------------------------

    async def create_prediction(self, request: web.Request) -> web.Response:
        body = read_json_object(request[BODY], hint=BODY_HINT)
        return await self._create(request, self.check_version(body.get("version")), body)

    async def create_model_prediction(self, request: web.Request) -> web.Response:
        model = self.check_model(*self._model_of(request))
        return await self._create(request, model, read_json_object(request[BODY], hint=BODY_HINT))

    async def create_version_prediction(self, request: web.Request) -> web.Response:
        model = self.check_model(*self._model_of(request))
        self.check_version(request.match_info["version"])
        return await self._create(request, model, read_json_object(request[BODY], hint=BODY_HINT))

    async def _create(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            raise ApiError(422, "Input validation failed", "'input' must be a JSON object")
        problem = input_problem(inputs)
        if problem is not None:
            raise ApiError(422, "Input validation failed", problem)
        prediction = Prediction(
            id=_new_prediction_id(), model=model, version=self.model.version_id, input=inputs
        )
        try:
            await self.runner.submit(prediction)
        except CogRefused as refused:
            raise _refusal_error(refused) from None
        except CogUnreachable as unreachable:
            raise ApiError(503, "Model unavailable", str(unreachable)) from None
        self._add(prediction)
        wait = _preferred_wait(request.headers.get("Prefer", ""))
        headers = {}
        if wait:
            await prediction.wait(timeout=wait, stop=self.stopping)
            headers["Preference-Applied"] = f"wait={wait}"
        return json_response(201, prediction.to_json(_base_url(request)), headers=headers)

    async def get_prediction(self, request: web.Request) -> web.Response:
        prediction = self._get(request.match_info["id"])
        return json_response(200, prediction.to_json(_base_url(request)))

    async def cancel_prediction(self, request: web.Request) -> web.Response:
        prediction = self._get(request.match_info["id"])
        await self.runner.cancel(prediction)
        await prediction.wait(timeout=CANCEL_WAIT_SECONDS, stop=self.stopping)
        return json_response(200, prediction.to_json(_base_url(request)))

    async def stream_prediction(self, request: web.Request) -> web.StreamResponse:
        prediction = self._get(request.match_info["id"])
        try:
            after = max(-1, int(request.headers.get("Last-Event-ID", "-1")))
        except ValueError:
            after = -1
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "Connection": "close",
            }
        )
        response.force_close()
        await response.prepare(request)
        try:
            async for event in prediction.follow(after=after, stop=self.stopping):
                await response.write(KEEPALIVE if event is None else format_event(event))
        except ConnectionError:
            log.info("a client left the stream of %s", prediction.id)
        return response

    # --- state -----------------------------------------------------------------------------------

    def _add(self, prediction: Prediction) -> None:
        self._predictions[prediction.id] = prediction
        self._created += 1
        finished = [p.id for p in self._predictions.values() if p.done]
        for prediction_id in finished[: max(0, len(finished) - KEPT_PREDICTIONS)]:
            del self._predictions[prediction_id]

    def _get(self, prediction_id: str) -> Prediction:
        prediction = self._predictions.get(prediction_id)
        if prediction is None:
            raise ApiError(404, "Not found", f"there is no prediction {prediction_id!r}")
        return prediction

    def _model_of(self, request: web.Request) -> tuple[str, str]:
        """``(OWNER, NAME)`` of the path, if NAME is the served model's."""
        owner, name = request.match_info["owner"], request.match_info["name"]
        self.check_model(owner, name)
        return owner, name

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


def _get_route(path: str, handler: Any) -> web.RouteDef:
    # No implicit HEAD: a HEAD request gets the 405 of a GET-only route, as before.
    return web.get(path + OPTIONAL_SLASH, handler, allow_head=False)


def _post_route(path: str, handler: Any) -> web.RouteDef:
    return web.post(path + OPTIONAL_SLASH, handler)


def _base_url(request: web.Request) -> str:
    """Where the client reached us (its ``Host``, else the address it connected to), for the URLs
    in a prediction."""
    host = request.headers.get("Host")
    if not host and request.transport is not None:
        address, port = request.transport.get_extra_info("sockname")[:2]
        host = f"{address}:{port}"
    return f"http://{host}"


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
