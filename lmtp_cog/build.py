"""The build pipeline: config → resolved commits → fetched files → rendered ``work/NAME``.

Each phase finishes for every selected model before the next starts, so a problem with any model
(a typo in a repo id, a gated repo, no network) stops the build before anything in ``work/`` or the
lock file changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import hub
from .checkpoints import link_checkpoints
from .config import ModelSpec, ProjectConfig, did_you_mean, load_config
from .errors import ConfigError, UnsupportedModelError
from .lockfile import Lockfile, lockfile_path
from .prequantize import prequantize_project
from .render import render_project
from .resolution import FileSelection, ResolvedModel
from .units import human_size
from .workdir import install, staging_area, trees_equal

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """What the command line asked for."""

    config_path: Path
    work_dir: Path | None = None
    """Defaults to ``work/`` beside the config file."""
    only: tuple[str, ...] = ()
    dry_run: bool = False
    offline: bool = False
    update: bool = False
    prequantize: bool = False
    """Ship bitsandbytes-quantized weights for 8-bit/4-bit models (see :mod:`.prequantize`)."""


@dataclass
class ModelOutcome:
    name: str
    resolved: ResolvedModel
    path: Path
    changed: bool = False


@dataclass
class BuildReport:
    outcomes: list[ModelOutcome] = field(default_factory=list)
    lockfile: Path | None = None


def build(options: BuildOptions, *, report: Reporter = print) -> BuildReport:
    """Build every selected model of ``options.config_path`` into the work directory.

    Raises:
        LmtpCogError: with a one-sentence message; nothing in ``work/`` or the lock file changed.
    """
    config = load_config(options.config_path)
    models = select_models(config, options.only)
    work_dir = options.work_dir or config.path.parent / "work"
    lock_path = lockfile_path(config.path)
    lock = Lockfile.load(lock_path)

    resolved = {
        model.name: _resolve(model, lock=lock, options=options, report=report) for model in models
    }
    if options.dry_run:
        _report_plan(config, models, resolved, work_dir=work_dir, report=report)
        return BuildReport(lockfile=None)

    fetched = {}
    for model in models:
        fetched[model.name] = hub.fetch(
            resolved[model.name], offline=options.offline, local_dir=model.source.local_dir
        )
        refuse_unsupported(model, fetched[model.name].get("config.json"))

    outcomes = []
    with staging_area(work_dir) as staging:
        staged = {}
        for model in models:
            out = staging / model.name
            out.mkdir()
            render_project(
                config=config,
                model=model,
                resolved=resolved[model.name],
                out_dir=out,
                with_push=config.dest_prefix is not None,
            )
            link_checkpoints(fetched[model.name], out / "checkpoints")
            if options.prequantize:
                done = prequantize_project(
                    out, model=model, resolved=resolved[model.name], installed=work_dir / model.name
                )
                report(done.summary())
            staged[model.name] = out
        # At this point every model staged without error: install them.
        for model in models:
            target = work_dir / model.name
            changed = not (target.exists() and trees_equal(staged[model.name], target))
            if changed:
                install(staged[model.name], target)
            outcomes.append(
                ModelOutcome(
                    name=model.name,
                    resolved=resolved[model.name],
                    path=target,
                    changed=changed,
                )
            )

    for entry in resolved.values():
        lock = lock.with_entry(entry)
    if not options.only:
        # A full build knows every model: entries of models removed from the config go too.
        configured = {model.name for model in config.models}
        lock = lock.without(name for name in lock.models if name not in configured)
    lock.save()
    for outcome in outcomes:
        _report_outcome(outcome, report=report)
    if config.dest_prefix is None:
        report(
            f"note: dest_prefix in {config.path.name} is still the placeholder, so no `push` "
            "script was written; set it to r8.im/YOUR_ACCOUNT/ and build again to publish."
        )
    return BuildReport(outcomes=outcomes, lockfile=lock_path)


def select_models(config: ProjectConfig, only: Sequence[str]) -> list[ModelSpec]:
    """The models named by ``--only`` (all when empty), in config order."""
    if not only:
        return list(config.models)
    known = sorted(model.name for model in config.models)
    unknown = [name for name in only if name not in known]
    if unknown:
        name = unknown[0]
        hint = did_you_mean(name, known) or f"; known models: {', '.join(known)}."
        raise ConfigError(
            f"--only names a model that is not in the file{hint}", path=config.path, model=name
        )
    wanted = set(only)
    return [model for model in config.models if model.name in wanted]


def refuse_unsupported(model: ModelSpec, config_json: Path | None) -> None:
    """Refuse checkpoints LMTP cannot serve, before anything is written.

    LMTP scores and extends one token sequence, which only decoder-only (causal) models do.
    """
    if config_json is None:
        raise UnsupportedModelError(
            f"model '{model.name}': {model.source.repo} has no config.json, so it is not a "
            "transformers checkpoint; point huggingface.repo at a causal language model."
        )
    config = json.loads(config_json.read_text())
    architectures = config.get("architectures") or []
    if config.get("is_encoder_decoder") or any("ConditionalGeneration" in a for a in architectures):
        raise UnsupportedModelError(
            f"model '{model.name}': {model.source.repo} is an encoder-decoder model "
            f"({', '.join(architectures) or config.get('model_type')}), which LMTP cannot serve; "
            "use a decoder-only (causal) language model."
        )


def _resolve(
    model: ModelSpec, *, lock: Lockfile, options: BuildOptions, report: Reporter
) -> ResolvedModel:
    """Pin the model to a commit: the locked one unless the config or ``--update`` says otherwise."""
    locked = None if options.update else lock.entry(model.name)
    source = model.source
    if locked is not None and (
        source.is_local or (locked.repo, locked.revision) != (source.repo, source.revision)
    ):
        locked = None
    selection = FileSelection(
        use_safetensors=model.args.use_safetensors, trust_remote_code=model.args.trust_remote_code
    )
    if locked is not None and locked.selection == selection:
        log.debug("%s: using locked commit %s", model.name, locked.commit)
        return locked
    # A new model, a new revision, --update, or other files wanted from the locked commit.
    resolved = hub.resolve(
        model.source,
        model_name=model.name,
        locked_commit=None if locked is None else locked.commit,
        offline=options.offline,
        use_safetensors=model.args.use_safetensors,
        trust_remote_code=model.args.trust_remote_code,
    )
    where = resolved.commit[:12] if resolved.commit else "local directory"
    report(f"{model.name}: {model.source.repo} @ {model.source.revision or 'default branch'} → {where}")
    return resolved


def _report_plan(
    config: ProjectConfig,
    models: Sequence[ModelSpec],
    resolved: dict[str, ResolvedModel],
    *,
    work_dir: Path,
    report: Reporter,
) -> None:
    for model in models:
        entry = resolved[model.name]
        report(
            f"{model.name}: would fetch {len(entry.files)} files ({human_size(entry.total_size)}) "
            f"from {entry.repo} at {entry.commit or 'local directory'}"
        )
        for file in entry.files:
            report(f"    {file.path}  {human_size(file.size)}")
        extra = "" if config.dest_prefix is not None else " (no push script: dest_prefix is the placeholder)"
        report(f"{model.name}: would write {work_dir / model.name}{extra}")
    report("dry run: nothing was downloaded or written.")


def _report_outcome(outcome: ModelOutcome, *, report: Reporter) -> None:
    state = "built" if outcome.changed else "up to date"
    report(
        f"{outcome.name}: {state}: {outcome.path} "
        f"({len(outcome.resolved.files)} checkpoint files, {human_size(outcome.resolved.total_size)})"
    )
