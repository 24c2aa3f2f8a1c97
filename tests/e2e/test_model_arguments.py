"""config.toml's open ``config.*`` section reaches ``from_pretrained`` in the real runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmtp_runtime.predictor import LmtpPredictor

from lmtp_cog.build import BuildOptions, build


def test_an_unknown_config_key_is_passed_to_from_pretrained(
    tmp_path: Path, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """``max_position_embeddings`` overrides the checkpoint's config through from_pretrained's
    keyword arguments: the served context window shows it arrived."""
    config = tmp_path / "config.toml"
    config.write_text(
        'dest_prefix = "r8.im/YOURACCOUNT/"\n[models.args]\n'
        f"huggingface.repo = {json.dumps(str(tiny_checkpoint('safetensors')))}\n"
        "config.max_position_embeddings = 100\nconfig.low_cpu_mem_usage = true\n"
    )
    lines: list[str] = []
    build(BuildOptions(config_path=config, work_dir=tmp_path / "work"), report=lines.append)

    assert "args: passed to from_pretrained: max_position_embeddings=100, low_cpu_mem_usage=true" in lines
    project = tmp_path / "work" / "args"
    assert "`max_position_embeddings=100, low_cpu_mem_usage=true`" in (project / "README.md").read_text()
    predictor = LmtpPredictor.from_settings(project / "model_settings.json")
    [info] = list(predictor.stream(ops_batch_json='[["MODEL_INFO", {"stream_id": 1}]]'))
    assert json.loads(info.split(" ", 1)[1])["model_info"]["context_length"] == 100
    assert predictor.model.config.max_position_embeddings == 100
