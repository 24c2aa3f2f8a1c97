"""``model_settings.json`` for a checkpoint on disk, made by the builder's own code.

Tests and the benchmark drive the runtime in-process (``LmtpPredictor.from_settings``) without a
whole build; this gives them exactly the document ``./build`` would write for a local model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtp_cog.config import HuggingFaceSource, ModelArgs, ModelSpec, ProjectConfig
from lmtp_cog.resolution import ResolvedModel
from lmtp_cog.settings import model_settings


def local_model_settings(
    checkpoint_dir: Path,
    *,
    name: str = "tiny",
    repo: str = "local/tiny",
    revision: str | None = None,
    commit: str | None = None,
    quantization: str = "none",
    max_batch_size: int = 8,
    concurrency: int = 8,
    log_predictions: bool = False,
    **load: Any,
) -> dict[str, Any]:
    """The settings for ``checkpoint_dir``; ``load`` overrides ``load.*`` keys.

    A relative ``checkpoint_dir`` stays relative: the runtime resolves it against the settings
    file's folder, as it does for a built project.
    """
    args = ModelArgs(
        load_in_8bit=quantization == "8bit",
        load_in_4bit=quantization == "4bit",
        max_batch_size=max_batch_size,
        concurrency=concurrency,
        log_predictions=log_predictions,
    )
    model = ModelSpec(name=name, source=HuggingFaceSource(repo=repo, revision=revision), args=args)
    settings = json.loads(
        model_settings(
            config=ProjectConfig(
                path=checkpoint_dir / "config.toml", dest_prefix=None, models=(model,)
            ),
            model=model,
            resolved=ResolvedModel(name=name, repo=repo, revision=revision, commit=commit, files=()),
        ).to_json()
    )
    settings["checkpoint_dir"] = str(checkpoint_dir)
    settings["load"].update(load)
    return settings
