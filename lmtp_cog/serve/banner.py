"""What ``./serve`` prints once the model is ready: what runs where, and how to talk to it.

Every snippet is built from the running servers (URL, model name, tokenizer folder), so it can be
pasted as it is. LMQL's native snippet needs nothing else: its websocket client takes the
endpoint as an argument. LMQL 0.7.3's Replicate client and LiteLLM 1.106 both hard-code
``https://api.replicate.com`` (LiteLLM ignores ``api_base`` there), so their snippets install
:mod:`lmtp_cog.serve.redirect` first. LiteLLM sends a text ``prompt`` and no LMTP ops, so its
snippet is shown only for a model whose required inputs it can fill. The OpenAI-compatible API's
snippets (the ``openai`` client and curl) use chat completions when the model has a chat template,
and legacy completions otherwise.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .project import read_build_info
from .service import Served

LITELLM_INPUTS = frozenset({"prompt"})
"""The inputs LiteLLM's Replicate provider fills (besides optional sampling settings)."""

MODEL_INFO_OPS = json.dumps([["MODEL_INFO", {"stream_id": 1}]])
"""A cheap request every LMTP model answers: good for a first try."""

OPENAI_MAX_TOKENS = 32


def banner(served: Served, *, project_dir: Path, startup_seconds: float) -> str:
    """The text printed when the servers are up."""
    model = served.model
    url = served.api_url
    ref = model.ref
    tokenizer = (project_dir / "checkpoints").resolve()
    cog = served.cog
    pid = cog.process.pid if cog.process is not None else "?"
    sections = [
        f"{model.name} is ready after {startup_seconds:.1f} s.",
        "\n".join(
            [
                f"  Replicate-compatible API  {url}  (model {ref}, any owner works;"
                f" version {model.version_id[:12]}…)",
                *_lmtp_line(served.lmtp_endpoint),
                _openai_line(served),
                f"  Cog server                {cog.url}  (pid {pid})",
                f"  Build                     {read_build_info(project_dir).describe()}",
                f"  Logs                      model and Cog server: {cog.log_path.resolve()}",
                "                            API requests: this terminal",
            ]
        ),
        _lmql_native(served.lmtp_endpoint, ref, tokenizer),
        _lmql(url, ref, tokenizer),
        _replicate(url, ref),
        _litellm(url, ref, _required_inputs(served)),
        _curl(url, ref),
        _openai_client(served),
        _openai_curl(served),
        "Ctrl-C (or SIGTERM) stops every server.",
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _lmtp_line(endpoint: str | None) -> list[str]:
    if endpoint is None:
        return []
    return [f"  LMTP websocket (LMQL)     ws://{endpoint}/  (as `lmql serve-model` serves it)"]


def _lmql_native(endpoint: str | None, ref: str, tokenizer: Path) -> str:
    if endpoint is None:
        return ""
    return f"""\
LMQL, native (its LMTP websocket client, as for `lmql serve-model`; nothing to patch):

    import lmql
    m = lmql.model({_py(ref)}, endpoint={_py(endpoint)}, tokenizer={_py(str(tokenizer))})
    print(lmql.run_sync('argmax "Hello[WHO]" where len(TOKENS(WHO)) < 10', model=m))"""


def _lmql(url: str, ref: str, tokenizer: Path) -> str:
    return f"""\
LMQL via the Replicate API (its Replicate client calls https://api.replicate.com, hard-coded:
redirect it in-process; any REPLICATE_API_TOKEN works):

    import os, lmql
    from lmtp_cog.serve.redirect import redirect_replicate_api
    redirect_replicate_api({_py(url)})
    os.environ.setdefault("REPLICATE_API_TOKEN", "local")
    m = lmql.model({_py(ref)}, endpoint={_py("replicate:" + ref)},
                   tokenizer={_py(str(tokenizer))})
    print(lmql.run_sync('argmax "Hello[WHO]" where len(TOKENS(WHO)) < 10', model=m))"""


def _replicate(url: str, ref: str) -> str:
    return f"""\
Replicate Python client:

    import replicate
    client = replicate.Client(api_token="local", base_url={_py(url)})
    print(client.run({_py(ref)}, input={{"ops_batch_json": {MODEL_INFO_OPS!r}}}))"""


def _litellm(url: str, ref: str, required: set[str]) -> str:
    if not required <= LITELLM_INPUTS:
        missing = ", ".join(sorted(required - LITELLM_INPUTS))
        return f"LiteLLM: not for this model: it requires {missing}, which LiteLLM does not send."
    return f"""\
LiteLLM (ignores api_base for Replicate: redirect it in-process):

    import litellm
    from lmtp_cog.serve.redirect import redirect_replicate_api
    redirect_replicate_api({_py(url)})
    print(litellm.completion(model={_py("replicate/" + ref)}, api_key="local",
                             messages=[{{"role": "user", "content": "Hello"}}]))"""


def _curl(url: str, ref: str) -> str:
    body = shlex.quote(json.dumps({"input": {"ops_batch_json": MODEL_INFO_OPS}}))
    return f"""\
curl:

    curl -s {url}/v1/models/{ref}/predictions -H 'Prefer: wait' \\
      -H 'Content-Type: application/json' -d {body}"""


def _openai_line(served: Served) -> str:
    if served.openai_problem is not None:
        return f"  OpenAI-compatible API     not for this model: {served.openai_problem}"
    return f"  OpenAI-compatible API     {served.openai_url}  (model {served.model.name})"


def _openai_client(served: Served) -> str:
    if served.openai_problem is not None:
        return ""
    model = _py(served.model.name)
    if served.openai_chat:
        call = f"""\
    reply = client.chat.completions.create(
        model={model}, max_tokens={OPENAI_MAX_TOKENS},
        messages=[{{"role": "user", "content": "Hello"}}])
    print(reply.choices[0].message.content)"""
    else:
        call = f"""\
    reply = client.completions.create(model={model}, prompt="Hello", max_tokens={OPENAI_MAX_TOKENS})
    print(reply.choices[0].text)"""
    return f"""\
OpenAI Python client (the OpenAI-compatible API; any api_key works):

    from openai import OpenAI
    client = OpenAI(base_url={_py(served.openai_url)}, api_key="local")
{call}"""


def _openai_curl(served: Served) -> str:
    if served.openai_problem is not None:
        return ""
    request: dict[str, object] = {"model": served.model.name, "max_tokens": OPENAI_MAX_TOKENS}
    if served.openai_chat:
        path = "chat/completions"
        request["messages"] = [{"role": "user", "content": "Hello"}]
    else:
        path = "completions"
        request["prompt"] = "Hello"
    return f"""\
OpenAI-compatible API with curl:

    curl -s {served.openai_url}/{path} -H 'Content-Type: application/json' \\
      -d {shlex.quote(json.dumps(request))}"""


def _py(text: str) -> str:
    """A Python string literal in double quotes (JSON's are valid Python for these values)."""
    return json.dumps(text)


def _required_inputs(served: Served) -> set[str]:
    schemas = served.model.openapi_schema.get("components", {}).get("schemas", {})
    return set(schemas.get("Input", {}).get("required", []))
