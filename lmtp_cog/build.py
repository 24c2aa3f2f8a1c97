"""The build pipeline: config → resolved commits → fetched files → rendered ``work/NAME``.

Each phase finishes for every selected model before the next starts, so a problem with any model
(a typo in a repo id, a gated repo, no network, a folder in ``work/`` that is not ours) stops the
build before anything in ``work/`` or the lock file changes. The last phase stages everything,
the lock file included, and then lands all of it or none of it (:class:`~.workdir.Installation`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmtp_runtime.checkpoint_kind import encoder_decoder_problem
from lmtp_runtime.settings import describe_arguments

from . import hub
from .checkpoints import link_checkpoints
from .config import ModelSpec, ProjectConfig, did_you_mean, load_config
from .errors import BuildError, ConfigError, describe_os_error
from .lockfile import Lockfile, lockfile_path
from .paths import DEFAULT_WORK_DIR
from .prequantize import prequantize_project
from .render import render_project
from .resolution import FileSelection, ResolvedModel
from .units import human_size
from .workdir import Installation, check_target, generated_trees_equal, staging_area

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """What the command line asked for."""

    config_path: Path
    work_dir: Path | None = None
    """Defaults to ``work/`` in the current directory, where ``./serve`` looks too."""
    only: tuple[str, ...] = ()
    dry_run: bool = False
    offline: bool = False
    update: bool = False
    prequantize: bool = False
    """Ship bitsandbytes-quantized weights for 8-bit/4-bit models (see :mod:`.prequantize`)."""
    force: bool = False
    """Build into a ``work/NAME`` the builder did not make (its other files are kept)."""


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
    options = replace(options, offline=hub.offline_wanted(options.offline))
    models = select_models(config, options.only)
    work_dir = (options.work_dir or DEFAULT_WORK_DIR).absolute()
    refuse_overlaps(config, models, work_dir=work_dir)
    for model in models:
        check_target(work_dir / model.name, force=options.force)
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
        try:
            fetched[model.name] = hub.fetch(
                resolved[model.name], offline=options.offline, local_dir=model.source.local_dir
            )
        except OSError as error:
            raise BuildError(
                f"model '{model.name}': "
                + describe_os_error(
                    error,
                    doing="fetch its files into the Hugging Face cache",
                    otherwise="point HF_HUB_CACHE at a writable folder",
                )
            ) from error
        refuse_unsupported(model, fetched[model.name].get("config.json"))

    for entry in resolved.values():
        lock = lock.with_entry(entry)
    if not options.only:
        # A full build knows every model: entries of models removed from the config go too.
        configured = {model.name for model in config.models}
        lock = lock.without(name for name in lock.models if name not in configured)
    try:
        outcomes = _stage_and_install(
            config, models, resolved, fetched, lock=lock, work_dir=work_dir, options=options,
            report=report,
        )
    except OSError as error:
        raise BuildError(
            describe_os_error(
                error, doing=f"build into {work_dir}", otherwise="choose another --work-dir"
            )
        ) from error
    for outcome in outcomes:
        _report_outcome(outcome, report=report)
    for model in models:
        if model.args.from_pretrained:
            passed = describe_arguments(dict(model.args.from_pretrained))
            report(f"{model.name}: passed to from_pretrained: {passed}")
    if config.dest_prefix is None:
        report(
            f"note: dest_prefix in {config.path.name} is still the placeholder, so no `push` "
            "script was written; to publish, set it to r8.im/ and your Replicate account's name "
            '(dest_prefix = "r8.im/alice/" for the account alice) and build again.'

        )
    return BuildReport(outcomes=outcomes, lockfile=lock_path)


def _stage_and_install(
    config: ProjectConfig,
    models: Sequence[ModelSpec],
    resolved: dict[str, ResolvedModel],
    fetched: dict[str, dict[str, Path]],
    *,
    lock: Lockfile,
    work_dir: Path,
    options: BuildOptions,
    report: Reporter,
) -> list[ModelOutcome]:
    """Render every model into a staging folder, write the lock beside its place, then swap all
    of it in; any failure on the way leaves ``work/`` and the lock as they were."""
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
        try:
            pending_lock = lock.stage()
        except OSError as error:
            raise BuildError(
                describe_os_error(error, doing=f"write the lock file {lock.path}")
            ) from error
        try:
            with Installation() as installation:
                for model in models:
                    target = work_dir / model.name
                    changed = not (
                        target.exists() and generated_trees_equal(staged[model.name], target)
                    )
                    if changed:
                        installation.install(staged[model.name], target)
                    outcomes.append(
                        ModelOutcome(model.name, resolved[model.name], target, changed=changed)
                    )
                if pending_lock is not None:
                    pending_lock.commit()
                installation.commit()
        finally:
            if pending_lock is not None:
                pending_lock.discard()
    return outcomes


def refuse_overlaps(config: ProjectConfig, models: Sequence[ModelSpec], *, work_dir: Path) -> None:
    """Refuse a local checkpoint that lies inside a folder the build replaces, or holds one.

    ``huggingface.repo = "./work/NAME"`` would otherwise be deleted by its own build, and a work
    folder inside a checkpoint would be listed (and shipped) as part of it.

    Raises:
        ConfigError: naming the model, its source and the build folder.
    """
    for model in models:
        source = model.source.local_dir
        if source is None:
            continue
        source = source.resolve()
        for other in models:
            target = (work_dir / other.name).resolve()
            if source == target or target in source.parents or source in target.parents:
                raise ConfigError(
                    f"huggingface.repo {model.source.repo} and the build folder {target} overlap, "
                    "so building would overwrite the checkpoint; move the checkpoint out of "
                    "work/, or choose another --work-dir",
                    path=config.path,
                    model=model.name,
                    key="huggingface.repo",
                )


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
        raise BuildError(
            f"model '{model.name}': {model.source.repo} has no config.json, so it is not a "
            "transformers checkpoint; point huggingface.repo at a causal language model."
        )
    problem = encoder_decoder_problem(_read_checkpoint_config(model, config_json))
    if problem is not None:
        raise BuildError(f"model '{model.name}': {model.source.repo} {problem}.")


def _read_checkpoint_config(model: ModelSpec, config_json: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict, or one sentence saying what is wrong with it."""
    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except OSError as error:
        raise BuildError(
            f"model '{model.name}': " + describe_os_error(error, doing="read its config.json")
        ) from error
    except ValueError as error:  # not UTF-8, or not JSON
        problem = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else f"not JSON ({error})"
        raise BuildError(
            f"model '{model.name}': the config.json of {model.source.repo} is {problem}; repair "
            "or re-download the checkpoint."
        ) from None
    if not isinstance(config, dict):
        raise BuildError(
            f"model '{model.name}': the config.json of {model.source.repo} holds a JSON "
            f"{type(config).__name__}, not an object; repair or re-download the checkpoint."
        )
    return config


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
