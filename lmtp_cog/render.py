"""Render one model's Cog project (everything but its checkpoints) from the templates.

Design rule: the model's settings reach the generated project only as data. ``push`` is the same
text for every model and reads ``model_settings.json``; cog.yaml gets its values as JSON scalars
and lists (JSON is YAML), so quotes, newlines or ``$(...)`` in a setting stay a value and never
become code. ``predict.py`` is the one exception, because ``cog build`` reads the Cog interface
from its source: its inputs come from the runtime's own table (``lmtp_runtime.inputs``) and its
concurrency is the model's ``config.concurrency``, an integer, each written as a Python literal.
README.md is prose for people: its code samples quote values for the language they show
(``tojson`` for Python, ``shquote`` for the shell).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import jinja2
from lmtp_runtime.inputs import RUN_INPUTS, CogInput, InputValue, is_plain_text
from lmtp_runtime.settings import ModelSettings, describe_arguments

from lmtp_cog import __version__, paths
from lmtp_cog.cog_interface import PREDICTOR_REF, parse_predictor
from lmtp_cog.config import TORCH_WHEEL_CUDA, ModelSpec, ProjectConfig
from lmtp_cog.errors import BuildError
from lmtp_cog.resolution import ResolvedModel
from lmtp_cog.model_settings import (
    CHECKPOINT_DIR,
    SETTINGS_FILE,
    model_settings,
    published_repo,
)
from lmtp_cog.units import human_size

TEMPLATE_OUTPUTS: dict[str, str] = {
    "cog.yaml": "cog.yaml.j2",
    "requirements.txt": "requirements.txt.j2",
    "README.md": "README.md.j2",
    ".dockerignore": "dockerignore.j2",
    ".gitignore": "gitignore.j2",
}
"""Each generated file and the template it comes from (the dotfiles' templates are visible)."""

PREDICT_PY = "predict.py"
PREDICT_TEMPLATE = "predict.py.j2"
PUSH_SCRIPT = "push"
PUSH_TEMPLATE = "push.j2"
RUNTIME_PACKAGE = "lmtp_runtime"
"""The runtime's folder in the generated project; ``predict.py`` imports it by this name."""
GENERATED_ENTRIES = frozenset(
    {*TEMPLATE_OUTPUTS, PREDICT_PY, SETTINGS_FILE, PUSH_SCRIPT, RUNTIME_PACKAGE, CHECKPOINT_DIR}
)
"""Every top-level entry of ``work/NAME`` the builder writes, and so may replace; a rebuild keeps
everything else there (``.cog/``, a user's files)."""

_QUANTIZATION_LABELS = {
    "8bit": "8-bit (bitsandbytes LLM.int8())",
    "4bit": "4-bit (bitsandbytes)",
    "none": "none",
}


def render_project(
    *,
    config: ProjectConfig,
    model: ModelSpec,
    resolved: ResolvedModel,
    out_dir: Path,
    with_push: bool = True,
    runtime_dir: Path = paths.RUNTIME_PACKAGE_DIR,
) -> list[Path]:
    """Write the Cog project of ``model`` into ``out_dir``, all but ``checkpoints/``.

    Every file is rendered in memory first, so a template error leaves ``out_dir`` untouched.

    Args:
        config: The whole configuration (it knows the push destination).
        model: The model's ``[models.NAME]`` table.
        resolved: The model pinned to a commit, with the files ``checkpoints/`` will hold.
        out_dir: A directory that holds none of the files written here (the builder passes a
            fresh staging folder); created if missing.
        with_push: Write the ``push`` script. The builder leaves it out while ``dest_prefix``
            is the placeholder, as there is nowhere to push to.
        runtime_dir: The ``lmtp_runtime`` package copied into the project.

    Returns:
        The paths of every file written, sorted.

    Raises:
        BuildError: ``out_dir`` already holds one of the files, the runtime package is missing,
            or an extra requirement cannot be written as one line of requirements.txt.
    """
    settings = model_settings(config=config, model=model, resolved=resolved)
    context = _template_context(config=config, model=model, resolved=resolved, settings=settings)
    environment = template_environment()
    texts = {
        output: environment.get_template(template).render(context)
        for output, template in TEMPLATE_OUTPUTS.items()
    }
    texts[PREDICT_PY] = render_predict_py(concurrency=model.args.concurrency)
    _check_interface(texts[PREDICT_PY], model=model, path=out_dir / PREDICT_PY)
    texts[SETTINGS_FILE] = settings.to_json()
    if with_push:
        texts[PUSH_SCRIPT] = environment.get_template(PUSH_TEMPLATE).render(context)
    _check_runtime(runtime_dir)
    _refuse_existing(out_dir, [*texts, RUNTIME_PACKAGE])

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for output, text in texts.items():
        path = out_dir / output
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if with_push:
        (out_dir / PUSH_SCRIPT).chmod(0o755)
    written += _copy_runtime(runtime_dir, out_dir / RUNTIME_PACKAGE)
    return sorted(written)


def render_predict_py(*, concurrency: int) -> str:
    """The ``predict.py`` of a model served ``concurrency`` predictions at a time.

    It depends on nothing else: the inputs are the runtime's (``lmtp_runtime.inputs``), and the
    model's settings stay in ``model_settings.json``.
    """
    if type(concurrency) is not int or concurrency < 1:
        raise BuildError(f"concurrency must be a positive integer, not {concurrency!r}")
    context = {
        "concurrency": concurrency,
        "run_inputs": [_rendered_input(spec) for spec in RUN_INPUTS],
    }
    return template_environment().get_template(PREDICT_TEMPLATE).render(context)


@functools.cache
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of ``templates/``: strict, no HTML escaping, two quoting filters."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths.TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["tojson"] = to_json
    environment.filters["shquote"] = shlex.quote
    return environment


# Characters JSON leaves raw that YAML would not read back as themselves: DEL and every
# non-ASCII character of the Basic Multilingual Plane (YAML takes U+0085, U+2028 and U+2029 for
# line breaks and refuses other non-printable ones). Characters beyond it stay raw: as escapes,
# JSON would write them as surrogate pairs, which YAML parsers do not join.
_YAML_UNSAFE = re.compile("[\x7f-\uffff]")


def to_json(value: object) -> str:
    """``value`` as JSON text that YAML (and Python, for strings) reads back as the same value.

    The ``tojson`` filter. Jinja2's own HTML-escapes ``<``, ``>``, ``&`` and ``'`` as ``\\u003c``
    and so on, which is correct but needlessly unreadable outside HTML.
    """
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _template_context(
    *,
    config: ProjectConfig,
    model: ModelSpec,
    resolved: ResolvedModel,
    settings: ModelSettings,
) -> dict[str, Any]:
    """Everything the templates may use; they compute nothing themselves."""
    destination = settings.destination
    # Replicate calls a model OWNER/NAME: the destination without its registry host.
    replicate_model = (
        destination.partition("/")[2] if destination is not None else f"ACCOUNT/{model.name}"
    )
    is_local = model.source.is_local
    return {
        "lmtp_cog_version": __version__,
        "config_file": config.path.name,
        "name": model.name,
        "destination": destination,
        "image": destination if destination is not None else f"r8.im/{replicate_model}",
        "replicate_model": replicate_model,
        "lmql_endpoint": f"replicate:{replicate_model}",
        "lmql_model": model.name if is_local else resolved.repo,
        "tokenizer": CHECKPOINT_DIR if is_local else resolved.repo,
        "source": {
            "repo": published_repo(model),
            "is_local": is_local,
            "revision": resolved.revision,
            "commit": resolved.commit,
            "url": None if is_local else f"https://huggingface.co/{resolved.repo}",
        },
        "load": settings.load,
        "from_pretrained": describe_arguments(dict(model.args.from_pretrained)),
        "serve": settings.serve,
        "quantization_label": _QUANTIZATION_LABELS[model.args.quantization],
        "checkpoint": {
            "files": len(resolved.files),
            "size": human_size(resolved.total_size),
            "weight_format": resolved.weight_format,
        },
        "cog": model.cog,
        "cuda": model.cog.image_cuda,
        "torch_wheel_cuda": TORCH_WHEEL_CUDA,
        "runtime_requirements": _runtime_requirements(paths.RUNTIME_REQUIREMENTS),
        "extra_requirements": [
            _requirement_line(requirement, model=model)
            for requirement in model.cog.extra_requirements
        ],
    }


def _rendered_input(spec: CogInput) -> dict[str, Any]:
    """One parameter of ``run()``: its annotation and its ``Input(...)`` keywords, as source."""
    keywords = [f"default={python_literal(spec.default)}"]
    keywords += [
        f"{name}={python_literal(bound)}"
        for name, bound in (("ge", spec.ge), ("le", spec.le))
        if bound is not None
    ]
    keywords.append(f"description={python_literal(spec.description)}")
    return {"name": spec.name, "annotation": spec.annotation, "keywords": keywords}


def python_literal(value: InputValue) -> str:
    """``value`` as Python source that ``ast.literal_eval`` and cog's static parser read back
    as ``value``: ``None``, an int, a float (``1.0`` stays a float) or a string.

    Strings must be plain text (:func:`lmtp_runtime.inputs.is_plain_text`), which the table's
    descriptions are checked to be.
    """
    if isinstance(value, str):
        if not is_plain_text(value):
            raise BuildError(f"{value!r} cannot be written as a literal that cog reads back")
        return f'"{value}"'
    if isinstance(value, bool) or not isinstance(value, int | float | None):
        raise BuildError(f"{value!r} is not an input default predict.py can declare")
    return repr(value)


def _check_interface(source: str, *, model: ModelSpec, path: Path) -> None:
    """Read the rendered ``predict.py`` back as ``cog build`` will, and insist it declares what
    the runtime serves: every input of ``RUN_INPUTS`` with its default, bounds and description,
    none required, streaming, and the model's concurrency. A template that drifted fails the
    build here instead of making an image that refuses LMQL's calls."""
    declared = parse_predictor(source, path=path, class_name=PREDICTOR_REF.partition(":")[2])
    seen = [
        (item.name, item.default, item.ge, item.le, item.description, item.required)
        for item in declared.inputs
    ]
    wanted = [
        (spec.name, spec.default, spec.ge, spec.le, spec.description, False) for spec in RUN_INPUTS
    ]
    concurrency = model.args.concurrency
    if (
        seen != wanted
        or not declared.streaming
        or declared.concurrency_max != concurrency
        or declared.is_async != (concurrency > 1)
    ):
        raise BuildError(
            f"model '{model.name}': the rendered predict.py does not declare the interface the "
            "runtime serves (templates/predict.py.j2 and lmtp_runtime/inputs.py disagree); "
            "reinstall lmtp-cog from a complete checkout."
        )


def _runtime_requirements(path: Path) -> list[str]:
    """The requirement lines of predictors/requirements.txt, the one place they are pinned."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _requirement_line(requirement: str, *, model: ModelSpec) -> str:
    """``requirement`` as one line of requirements.txt, which has no quoting to protect it.

    config.toml's validation already insists on ``name==version``; this guards the file format
    itself, so that no value can add a second line or a pip option.
    """
    if len(requirement.splitlines()) != 1 or requirement.lstrip().startswith("-"):
        raise BuildError(
            f"model '{model.name}': cog.extra_requirements entry {requirement!r} is not a single "
            "requirement; write each as one name==version string."
        )
    return requirement


def _check_runtime(runtime_dir: Path) -> None:
    if not (runtime_dir / "predictor.py").is_file():
        raise BuildError(
            f"the predictor runtime is missing: {runtime_dir} has no predictor.py; reinstall "
            "lmtp-cog from a complete checkout."
        )


def _refuse_existing(out_dir: Path, names: list[str]) -> None:
    clashes = sorted(name for name in names if (out_dir / name).exists())
    if clashes:
        raise BuildError(
            f"{out_dir} already holds {', '.join(clashes)}; render a project into an empty "
            "folder."
        )


def _copy_runtime(source: Path, target: Path) -> list[Path]:
    """Copy the runtime package (real files, no links), without bytecode caches."""
    shutil.copytree(
        source,
        target,
        symlinks=False,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return [path for path in target.rglob("*") if path.is_file()]
