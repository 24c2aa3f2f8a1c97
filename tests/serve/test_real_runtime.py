"""End to end: the real LMTP runtime, served by ./serve's stack, queried by real LMQL.

The project is put together the way ./build lays it out (the runtime package copied in, the
builder's predict.py, model_settings.json, a tiny random Llama checkpoint), then served by
the real Cog server behind the Replicate-compatible API. LMQL's answer must equal plain
transformers greedy decoding of the same token ids.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import replicate

from lmtp_cog.paths import RUNTIME_PACKAGE_DIR
from lmtp_cog.render import render_predict_py
from lmtp_cog.serve.redirect import redirect_replicate_api
from lmtp_cog.serve.service import Served, serve_project

MODEL = "tiny-llama"
OWNER = "tester"
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Callable[[str], Path]
) -> Path:
    project = tmp_path_factory.mktemp("runtime") / "work" / MODEL
    shutil.copytree(tiny_checkpoint("safetensors"), project / "checkpoints")
    shutil.copytree(
        RUNTIME_PACKAGE_DIR, project / "lmtp_runtime", ignore=shutil.ignore_patterns("__pycache__")
    )
    (project / "predict.py").write_text(render_predict_py(concurrency=8))
    settings = {
        "format": 1,
        "name": MODEL,
        "destination": f"r8.im/{OWNER}/{MODEL}",
        "checkpoint_dir": "checkpoints",
        "load": {"quantization": "none"},
        "serve": {"max_batch_size": 4, "concurrency": 8},
    }
    (project / "model_settings.json").write_text(json.dumps(settings))
    return project


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[Served]:
    with serve_project(project, port=0) as served:
        yield served


def _greedy_ids(checkpoint: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Plain transformers greedy decoding, stopped at the first end-of-sequence token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == tokenizer.eos_token_id:
            break
    return ids[len(prompt_ids) :]


def _prompt_ids(checkpoint: Path, text: str) -> list[int]:
    """The ids LMQL sends for ``text``: BOS, then the text's tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]


# The runtime logs each prediction; LMQL's client reads `logs` events as LMTP lines and warns.
@pytest.mark.filterwarnings("ignore:Unknown command:UserWarning")
def test_an_lmql_query_equals_transformers_greedy_decoding(
    served: Served, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmql
    from transformers import AutoTokenizer

    checkpoint = project / "checkpoints"
    monkeypatch.setenv("REPLICATE_API_TOKEN", "any-token")
    model = lmql.model(
        f"{OWNER}/{MODEL}", endpoint=f"replicate:anyone/{MODEL}", tokenizer=str(checkpoint)
    )

    with redirect_replicate_api(served.api_url):
        result = lmql.run_sync(
            f'argmax "Hello[WHO]" where len(TOKENS(WHO)) < {MAX_TOKENS}', model=model
        )

    expected_ids = _greedy_ids(checkpoint, _prompt_ids(checkpoint, "Hello"), MAX_TOKENS - 1)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    expected = tokenizer.decode(
        [i for i in expected_ids if i != tokenizer.eos_token_id], skip_special_tokens=True
    )
    assert result.variables["WHO"] == expected
    assert expected.strip()  # a real answer, not two empty strings


def test_the_replicate_client_streams_the_runtimes_lmtp_lines(
    served: Served, project: Path
) -> None:
    checkpoint = project / "checkpoints"
    prompt = _prompt_ids(checkpoint, "The quick brown")
    ops = [
        ["GENERATE", {"stream_id": 7, "prompt": prompt, "max_tokens": 5, "temperature": 0}],
        ["MODEL_INFO", {"stream_id": 8}],
    ]
    client = replicate.Client(api_token="any-token", base_url=served.api_url)

    chunks = [
        str(event)
        for event in client.stream(f"{OWNER}/{MODEL}", input={"ops_batch_json": json.dumps(ops)})
        if event.event.value == "output"
    ]

    lines = [line for chunk in chunks for line in chunk.splitlines()]
    tokens = [json.loads(line[len("TOKEN ") :]) for line in lines if line.startswith("TOKEN ")]
    infos = [json.loads(line[len("MSG ") :]) for line in lines if line.startswith("MSG ")]
    assert [t["token"] for t in tokens] == _greedy_ids(checkpoint, prompt, 5)
    assert {t["stream_id"] for t in tokens} == {7}
    assert infos and infos[0]["stream_id"] == 8 and infos[0]["model_info"]["name"] == MODEL
