"""The OpenAI-compatible API over HTTP, under ``/openai/v1``: what OpenAI's clients, LiteLLM's
``openai/`` provider and other tools that take a ``base_url`` talk to.

    GET  /openai/v1/models                 the served model (id: its name)
    GET  /openai/v1/models/MODEL           the same, by name (``NAME`` or ``OWNER/NAME``)
    POST /openai/v1/completions            legacy completions: prompt, echo, logprobs
    POST /openai/v1/chat/completions       chat completions: messages, logprobs, top_logprobs

Each request is checked (:mod:`.openai_requests`), mapped onto LMTP ops and run as one Cog
prediction (:mod:`.openai_api`) by the same :class:`~.runner.PredictionRunner` as every other
API: it waits in the same queue, and the model batches it with the rest. Its TOKEN lines are
read as they stream; when a ``stop`` sequence ends the text, the rest of the prediction is
canceled, so that the model does not spend time on it. With ``stream``, the answer is OpenAI's
server-sent events (``data: {chunk}`` ... ``data: [DONE]``), sent once the model produced its first
line, so that a request the model refuses (a prompt longer than its context window) still gets
an HTTP error.

Errors take OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
field (``param`` names it), 404 for another model (``code`` ``model_not_found``), 503 when the
model's tokenizer is missing or Cog is gone. An error in the middle of a stream is sent as a last
``data: {"error": ...}`` event, which OpenAI's client raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from datetime import datetime
from typing import Any

from aiohttp import web

from .errors import CogRefused, CogUnreachable
from .lmtp_frames import ops_batch_input, output_line
from .openai_api import (
    GENERATE_STREAM,
    SCORE_STREAM,
    Delta,
    Envelope,
    Prompt,
    TokenDecoder,
    TokenLogprob,
    chat_chunk_json,
    chat_json,
    chat_logprobs_json,
    chat_prompt,
    completion_json,
    completion_logprobs_json,
    completion_prompt,
    lmtp_ops,
    prompt_logprobs,
    usage_json,
)
from .openai_requests import ChatRequest, CompletionRequest, parse_chat, parse_completion
from .prediction import Prediction
from .problems import ApiError, json_response
from .project import ServedModel
from .request_body import BODY, read_json_object
from .runner import PredictionRunner
from .tokenizer import ProjectTokenizer

log = logging.getLogger(__name__)

PREFIX = "/openai/"
"""Every path of this API starts so; the errors of any such path take OpenAI's shape."""
BASE = "/openai/v1"
"""The ``base_url`` to give OpenAI's clients (after the server's address)."""


def openai_error(error: ApiError) -> web.Response:
    """``error`` as OpenAI answers it."""
    body = {
        "error": {
            "message": error.detail,
            "type": "invalid_request_error" if error.status < 500 else "server_error",
            "param": error.param,
            "code": error.code,
        }
    }
    return json_response(error.status, body, close=error.close, headers=error.headers)


class OpenAiApi:
    """The OpenAI-compatible routes of one served model."""

    def __init__(
        self,
        model: ServedModel,
        runner: PredictionRunner,
        tokenizer: ProjectTokenizer,
        *,
        stopping: asyncio.Event,
    ) -> None:
        self.model = model
        self.runner = runner
        self._tokenizer = tokenizer
        self.stopping = stopping

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{BASE}/models", self.list_models, allow_head=False),
            web.get(BASE + "/models/{model:.+}", self.get_model, allow_head=False),
            web.post(f"{BASE}/completions", self.completions),
            web.post(f"{BASE}/chat/completions", self.chat_completions),
        ]

    # --- models ----------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        return json_response(200, {"object": "list", "data": [self._model_json()]})

    async def get_model(self, request: web.Request) -> web.Response:
        self._check_model(request.match_info["model"])
        return json_response(200, self._model_json())

    def _model_json(self) -> dict[str, Any]:
        created = datetime.fromisoformat(self.model.created_at.replace("Z", "+00:00"))
        return {
            "id": self.model.name,
            "object": "model",
            "created": int(created.timestamp()),
            "owned_by": self.model.owner,
        }

    def _check_model(self, model: str) -> None:
        """Accept the model's name, and ``OWNER/NAME`` for any owner (as the Replicate API)."""
        if model.rpartition("/")[2] != self.model.name:
            raise ApiError(
                404,
                "Not found",
                f"the model {model!r} is not served here; this server serves "
                f"{self.model.name!r} (also as {self.model.ref!r})",
                param="model",
                code="model_not_found",
            )

    # --- completions -----------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = read_json_object(request[BODY], hint='{"model": ..., "prompt": ...}')
        completion = parse_completion(body)
        self._check_model(completion.model)
        tokenizer = self._tokenizer_or_503()
        prompt = completion_prompt(tokenizer, completion.prompt)
        wants_logprobs = completion.logprobs is not None
        generate = completion.sampling.max_tokens != 0
        ops = lmtp_ops(
            prompt,
            completion.sampling,
            top_logprobs=completion.logprobs or 0,
            generate=generate,
            score_prompt=completion.echo and wants_logprobs,
        )
        decoder = TokenDecoder(
            tokenizer, stop=completion.sampling.stop, context=prompt.ids, logprobs=wants_logprobs
        )
        if not generate:
            decoder.end("length")
        run = _Run(self, ops, prompt_param="prompt")
        outputs = run.outputs(decoder)
        envelope = Envelope.new("cmpl", completion.model)
        if completion.stream:
            return await self._stream_completion(
                request,
                completion,
                prompt,
                envelope,
                outputs,
                decoder,
                tokenizer=tokenizer,
                scores_prompt=run.scores_prompt,
            )
        text, entries, scores = "", [], []
        async with aclosing(outputs):
            async for output in outputs:
                if isinstance(output, Delta):
                    text += output.text
                    entries += output.logprobs
                else:
                    scores = output
        echoed: list[TokenLogprob] = []
        if completion.echo:
            text = prompt.text + text
            if wants_logprobs:
                echoed = prompt_logprobs(tokenizer, prompt, scores)
        logprobs = None
        if wants_logprobs:
            base = len(prompt.text) if completion.echo else 0
            generated = completion_logprobs_json(entries, base=base)
            logprobs = _joined(completion_logprobs_json(echoed), generated)
        return json_response(
            200,
            completion_json(
                envelope,
                text=text,
                logprobs=logprobs,
                finish_reason=decoder.finish_reason,
                usage=usage_json(len(prompt.ids), decoder.completion_tokens),
            ),
        )

    async def _stream_completion(
        self,
        request: web.Request,
        completion: CompletionRequest,
        prompt: Prompt,
        envelope: Envelope,
        outputs: AsyncIterator[Delta | list[dict[str, Any]]],
        decoder: TokenDecoder,
        *,
        tokenizer: Any,
        scores_prompt: bool,
    ) -> web.StreamResponse:
        wants_logprobs = completion.logprobs is not None
        base = len(prompt.text) if completion.echo else 0
        echo_pending = completion.echo
        held: list[Delta] = []

        def chunk(text: str, logprobs: dict[str, Any] | None, finish: str | None = None) -> Any:
            return completion_json(
                envelope, text=text, logprobs=logprobs, finish_reason=finish, chunk=True
            )

        def echo_then_held(scores: list[dict[str, Any]]) -> Iterator[Any]:
            """The echoed prompt (with its scores' logprobs if asked), then the text held back
            while it waited for them."""
            if wants_logprobs:
                entries = prompt_logprobs(tokenizer, prompt, scores)
                yield chunk(prompt.text, completion_logprobs_json(entries))
            else:
                yield chunk(prompt.text, None)
            for delta in held:
                yield chunk(delta.text, _legacy(delta, wants_logprobs, base))
            held.clear()

        async def events() -> AsyncIterator[Any]:
            nonlocal echo_pending
            if echo_pending and not scores_prompt:
                echo_pending = False
                for event in echo_then_held([]):
                    yield event
            async with aclosing(outputs):
                async for output in outputs:
                    if not isinstance(output, Delta):  # the prompt's scores: the echo goes first
                        echo_pending = False
                        for event in echo_then_held(output):
                            yield event
                    elif echo_pending:
                        held.append(output)
                    else:
                        yield chunk(output.text, _legacy(output, wants_logprobs, base))
            if echo_pending:  # the scores never came (the text ended first): echo without them
                for event in echo_then_held([]):
                    yield event
            yield chunk("", None, decoder.finish_reason)
            if completion.include_usage:
                usage = usage_json(len(prompt.ids), decoder.completion_tokens)
                yield {**chunk("", None), "choices": [], "usage": usage}

        return await _send_events(request, events())

    # --- chat completions ------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = read_json_object(request[BODY], hint='{"model": ..., "messages": [...]}')
        chat = parse_chat(body)
        self._check_model(chat.model)
        tokenizer = self._tokenizer_or_503()
        prompt = chat_prompt(tokenizer, chat.messages)
        top = chat.top_logprobs if chat.logprobs else 0
        ops = lmtp_ops(prompt, chat.sampling, top_logprobs=top)
        decoder = TokenDecoder(
            tokenizer, stop=chat.sampling.stop, context=prompt.ids, logprobs=chat.logprobs
        )
        outputs = _Run(self, ops, prompt_param="messages").outputs(decoder)
        envelope = Envelope.new("chatcmpl", chat.model)
        if chat.stream:
            return await self._stream_chat(request, chat, prompt, envelope, outputs, decoder)
        content, entries = "", []
        async with aclosing(outputs):
            async for output in outputs:
                if isinstance(output, Delta):
                    content += output.text
                    entries += output.logprobs
        return json_response(
            200,
            chat_json(
                envelope,
                content=content,
                logprobs=chat_logprobs_json(entries, top=top) if chat.logprobs else None,
                finish_reason=decoder.finish_reason or "length",
                usage=usage_json(len(prompt.ids), decoder.completion_tokens),
            ),
        )

    async def _stream_chat(
        self,
        request: web.Request,
        chat: ChatRequest,
        prompt: Prompt,
        envelope: Envelope,
        outputs: AsyncIterator[Delta | list[dict[str, Any]]],
        decoder: TokenDecoder,
    ) -> web.StreamResponse:
        top = chat.top_logprobs

        async def events() -> AsyncIterator[Any]:
            first = True
            async with aclosing(outputs):
                async for output in outputs:
                    if not isinstance(output, Delta):
                        continue
                    delta: dict[str, Any] = {"content": output.text}
                    if first:
                        delta = {"role": "assistant", **delta}
                        first = False
                    logprobs = None
                    if chat.logprobs:
                        logprobs = chat_logprobs_json(output.logprobs, top=top)
                    yield chat_chunk_json(envelope, delta=delta, logprobs=logprobs)
            if first:  # nothing was generated: the role still comes first
                yield chat_chunk_json(envelope, delta={"role": "assistant", "content": ""})
            yield chat_chunk_json(envelope, delta={}, finish_reason=decoder.finish_reason)
            if chat.include_usage:
                usage = usage_json(len(prompt.ids), decoder.completion_tokens)
                yield chat_chunk_json(envelope, delta=None, usage=usage)

        return await _send_events(request, events())

    def _tokenizer_or_503(self) -> Any:
        if self._tokenizer.tokenizer is None:
            raise ApiError(
                503,
                "Model unavailable",
                f"the OpenAI-compatible API needs the model's tokenizer: {self._tokenizer.problem}",
            )
        return self._tokenizer.tokenizer


class _Run:
    """One request's prediction on Cog: its TOKEN lines, read as they stream."""

    def __init__(self, api: OpenAiApi, ops: list[list[Any]], *, prompt_param: str) -> None:
        self._api = api
        self._ops = ops
        self._prompt_param = prompt_param
        self._scored = sum(len(args["scored"]) for command, args in ops if command == "SCORE")
        """How many prompt tokens the ops score: that many SCORE lines end the scores."""
        self._prediction = Prediction(
            id="openai-" + secrets.token_hex(10),
            model=api.model.ref,
            version=api.model.version_id,
            input=ops_batch_input(ops),
        )

    @property
    def scores_prompt(self) -> bool:
        """Whether the ops score the prompt (an echo with logprobs): outputs() then yields them."""
        return self._scored > 0

    async def outputs(self, decoder: TokenDecoder) -> AsyncIterator[Delta | list[dict[str, Any]]]:
        """What the request asked, as it comes: each :class:`Delta` of the generated text, and
        the SCORE lines of the prompt once they are all there. Once the text ended (a stop
        sequence, the model's end, the limit) and the prompt is scored, the rest is canceled.

        Raises:
            ApiError: the model refused the request (400 naming the field), or the prediction
                failed (500) or could not run (503).
        """
        scored = self._scored
        if not self._ops:
            return
        await self._submit()
        scores: list[dict[str, Any]] = []
        ended = False  # whether the model ended every stream itself: the prediction then ends
        try:
            async with aclosing(self._lines()) as lines:
                async for line in lines:
                    if line.get("stream_id") == SCORE_STREAM:
                        scores.append(line)
                        if len(scores) == scored:
                            yield scores
                    elif line.get("stream_id") == GENERATE_STREAM:
                        delta = decoder.push(line)
                        if delta:
                            yield delta
                    if decoder.finished and len(scores) >= scored:
                        ended = not decoder.stopped_by_sequence
                        break
                else:
                    ended = True
        finally:
            # A stop sequence, an error, or a client that left: free the model for the others.
            if not ended and not self._prediction.done:
                await self._api.runner.cancel(self._prediction)
        if not decoder.finished:
            tail = decoder.end("length")
            if tail:
                yield tail

    async def _submit(self) -> None:
        try:
            await self._api.runner.submit(self._prediction)
        except CogRefused as refused:
            raise ApiError(
                500, "Model error", f"the Cog server refused the request: {refused.body}"
            ) from None
        except CogUnreachable as unreachable:
            raise ApiError(503, "Model unavailable", str(unreachable)) from None

    async def _lines(self) -> AsyncIterator[dict[str, Any]]:
        prediction = self._prediction
        async for event in prediction.follow(stop=self._api.stopping):
            if event is None or event.name != "output":
                continue
            for line in event.data.splitlines():
                parsed = output_line(line)
                if parsed is None:
                    continue
                kind, payload = parsed
                if payload.get("error") is not None:
                    raise self._model_error(str(payload["error"]))
                if kind == "TOKEN":
                    yield payload
        if prediction.status == "failed":
            raise ApiError(500, "Model error", f"the prediction failed: {prediction.error}")
        if prediction.status == "canceled" or not prediction.done:
            raise ApiError(503, "Model unavailable", "the prediction was canceled: ./serve stops")

    def _model_error(self, message: str) -> ApiError:
        """An error line of the model, as OpenAI would say it: a field at fault is the client's."""
        message = message.removeprefix("GENERATE: ").removeprefix("SCORE: ")
        if "field '" not in message:
            return ApiError(500, "Model error", message)
        param = self._prompt_param if "'prompt'" in message else None
        if "'logit_bias'" in message:
            param = "logit_bias"
        return ApiError(400, "Bad request", message, param=param)


def _legacy(delta: Delta, wants_logprobs: bool, base: int) -> dict[str, Any] | None:
    return completion_logprobs_json(delta.logprobs, base=base) if wants_logprobs else None


def _joined(first: dict[str, list[Any]], second: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Two legacy logprobs objects, one after the other (an echoed prompt, then the output)."""
    return {key: first[key] + second[key] for key in first}


async def _send_events(request: web.Request, events: AsyncIterator[Any]) -> web.StreamResponse:
    """OpenAI's stream: ``data: {json}`` per event, then ``data: [DONE]``.

    The response starts with the first event, so that an error before it (the model refused the
    prompt) is an HTTP error; an error after it is the stream's last event.
    """
    response: web.StreamResponse | None = None
    try:
        async with aclosing(events):
            async for event in events:
                if response is None:
                    response = web.StreamResponse(
                        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                    )
                    await response.prepare(request)
                await response.write(_data(event))
    except ApiError as error:
        if response is None:
            raise
        body = json.loads(openai_error(error).body)  # type: ignore[arg-type]
        await _write_quietly(response, _data(body))
    except ConnectionError:
        log.info("a client left its OpenAI stream")
        assert response is not None
        return response
    if response is None:  # no event at all (cannot happen: the last chunk always comes)
        raise ApiError(500, "Internal error", "the stream had no events")
    await _write_quietly(response, b"data: [DONE]\n\n")
    return response


def _data(event: Any) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        log.info("a client left its OpenAI stream")
