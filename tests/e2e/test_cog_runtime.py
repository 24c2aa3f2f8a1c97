"""A project built by ./build, run by the real Cog server (coglet) exactly as in the container."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtp_cog.cogserver import CogServer, CogServerError


def _lines(output: list[str]) -> list[tuple[str, dict]]:
    lines = []
    for chunk in output:
        assert chunk.endswith("\n"), "every chunk is whole lines"
        for line in chunk.splitlines():
            kind, payload = line.split(" ", 1)
            lines.append((kind, json.loads(payload)))
    return lines


def test_built_project_serves_generate_score_and_model_info(built_project: Path) -> None:
    checkpoint = built_project / "checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompt = [tokenizer.bos_token_id, *tokenizer("Hello world", add_special_tokens=False).input_ids]
    ops = [
        ["GENERATE", {"stream_id": "g", "prompt": prompt, "max_tokens": 6, "temperature": 0}],
        ["SCORE", {"stream_id": "s", "prompt": prompt[:2], "scored": prompt[2:]}],
        ["MODEL_INFO", {"stream_id": "i"}],
    ]

    with CogServer(built_project) as server:
        server.wait_ready(timeout=120)
        response = server.predict({"ops_batch_json": json.dumps(ops)})

    assert response["status"] == "succeeded"
    lines = _lines(response["output"])
    generated = [p["token"] for kind, p in lines if kind == "TOKEN" and p["stream_id"] == "g"]
    with torch.no_grad():
        ids = list(prompt)
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        logprobs = torch.log_softmax(model(torch.tensor([prompt])).logits[0], dim=-1)
    assert generated == ids[len(prompt) :]
    scored = [p for kind, p in lines if kind == "TOKEN" and p["stream_id"] == "s"]
    assert [p["token"] for p in scored] == prompt[2:]
    for j, p in enumerate(scored):
        assert p["logprob"] == pytest.approx(float(logprobs[1 + j, prompt[2 + j]]), abs=1e-4)
    info = next(p["model_info"] for kind, p in lines if kind == "MSG")
    assert info["name"] == "tiny-llama" and info["source"] == "local directory"
    assert info["repo"] is None  # a local folder is a path of the build machine: not shown


def test_broken_checkpoint_reports_setup_failed_instead_of_hanging(
    built_project: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "work" / "broken"
    shutil.copytree(built_project, broken)
    (broken / "checkpoints" / "config.json").write_text("{ not json")

    started = time.monotonic()
    with CogServer(broken) as server, pytest.raises(CogServerError, match="setup\\(\\) of broken failed"):
        server.wait_ready(timeout=120)
    assert time.monotonic() - started < 60
