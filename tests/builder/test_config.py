"""config.toml loading: what a good file gives, and how each mistake is reported."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub.utils import HFValidationError, validate_repo_id

from lmtp_cog import paths
from lmtp_cog.config import (
    TORCH_WHEEL_CUDA,
    CogOptions,
    HuggingFaceSource,
    ModelArgs,
    ProjectConfig,
    load_config,
)
from lmtp_cog.errors import ConfigError, ConfigErrors, ConfigNotFoundError
from lmtp_cog.names import hub_repo_id_problem, model_name_problem, replicate_owner_problem

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.toml.example"
# LMQL's scripts/replicate-build/config.toml.example, kept verbatim.
LMQL_EXAMPLE = REPO_ROOT / "tests" / "fixtures" / "lmql-config.toml.example"


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's for these)."""
    return json.dumps(text)


def config_text(
    *model_lines: str,
    dest: str = '"r8.im/alice/"',
    name: str = "tiny",
    repo: str | None = "owner/tiny",
) -> str:
    """A config with one model; the arguments replace the parts a test is about."""
    lines = [f"dest_prefix = {dest}", f"[models.{toml_string(name)}]"]
    if repo is not None:
        lines.append(f"huggingface.repo = {toml_string(repo)}")
    return "\n".join([*lines, *model_lines]) + "\n"


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def problems_in(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as raised:
        load_config(path)
    return raised.value.errors


def only_problem(path: Path) -> ConfigError:
    errors = problems_in(path)
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


def assert_located(error: ConfigError, path: Path, *, model: str | None, key: str | None) -> None:
    """The error names the file, the model and the key, as attributes and in its text."""
    assert (error.path, error.model, error.key) == (path, model, key)
    text = str(error)
    assert str(path) in text
    if model is not None:
        assert f"model '{model}'" in text
    if key is not None:
        assert f"key '{key}'" in text


# --- good files -----------------------------------------------------------------------------------


def test_a_minimal_model_gets_the_defaults(write) -> None:
    path = write(config_text(dest='"r8.im/alice"'))

    config = load_config(path)

    assert config.path == path.resolve() and config.path.is_absolute()
    assert config.dest_prefix == "r8.im/alice/", "the trailing slash is added"
    (model,) = config.models
    assert model.name == "tiny"
    assert model.source == HuggingFaceSource(repo="owner/tiny")
    assert not model.source.is_local
    assert model.args == ModelArgs()
    assert model.cog == CogOptions()
    assert config.destination(model) == "r8.im/alice/tiny"


@pytest.mark.parametrize("dest", ['"r8.im/YOURACCOUNT/"', '"r8.im/YOURACCOUNT"'])
def test_the_placeholder_account_means_no_destination(write, dest: str) -> None:
    config = load_config(write(config_text(dest=dest)))

    assert config.dest_prefix is None
    assert config.destination(config.models[0]) is None


def test_every_key_reaches_its_field(write) -> None:
    path = write(
        config_text(
            'huggingface.version = "v1.0"',
            "config.load_in_8bit = true",
            'config.torch_dtype = "bfloat16"',
            "config.use_safetensors = false",
            "config.trust_remote_code = true",
            'config.device_map = "cuda:0"',
            'config.attn_implementation = "sdpa"',
            "config.max_batch_size = 32",
            "config.concurrency = 16",
            "cog.gpu = true",
            'cog.cuda = "12.4"',
            'cog.python_version = "3.12"',
            'cog.sdk_version = "0.24.0"',
            'cog.extra_requirements = ["sentencepiece==0.2.0", "transformers[torch] == 4.40.0"]',
            'cog.system_packages = ["ffmpeg", "libsndfile1", "g++"]',
        )
    )

    (model,) = load_config(path).models

    assert model.source == HuggingFaceSource(repo="owner/tiny", revision="v1.0")
    assert model.args == ModelArgs(
        load_in_8bit=True,
        torch_dtype="bfloat16",
        use_safetensors=False,
        trust_remote_code=True,
        device_map="cuda:0",
        attn_implementation="sdpa",
        max_batch_size=32,
        concurrency=16,
    )
    assert model.args.quantization == "8bit"
    assert model.cog == CogOptions(
        gpu=True,
        cuda="12.4",
        python_version="3.12",
        sdk_version="0.24.0",
        extra_requirements=("sentencepiece==0.2.0", "transformers[torch] == 4.40.0"),
        system_packages=("ffmpeg", "libsndfile1", "g++"),
    )


def test_dtype_is_an_alias_of_torch_dtype(write) -> None:
    (model,) = load_config(write(config_text('config.dtype = "float16"'))).models
    assert model.args.torch_dtype == "float16"


def test_sub_tables_read_like_dotted_keys(write) -> None:
    dotted = load_config(write(config_text("config.load_in_4bit = true", "cog.gpu = false")))
    tables = load_config(
        write(
            'dest_prefix = "r8.im/alice/"\n'
            "[models.tiny.huggingface]\n"
            'repo = "owner/tiny"\n'
            "[models.tiny.config]\n"
            "load_in_4bit = true\n"
            "[models.tiny.cog]\n"
            "gpu = false\n"
        )
    )
    assert tables.models == dotted.models
    assert tables.models[0].args.quantization == "4bit"


def test_models_keep_their_order_in_the_file(write) -> None:
    names = ["zeta", "alpha", "mid.dle"]
    text = 'dest_prefix = "r8.im/alice/"\n' + "".join(
        f'[models.{toml_string(name)}]\nhuggingface.repo = "owner/{name}"\n' for name in names
    )
    assert [model.name for model in load_config(write(text)).models] == names


# --- local directories ---------------------------------------------------------------------------


def test_a_relative_local_repo_resolves_against_the_config_folder(
    write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "checkpoints" / "tiny").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory must not matter

    (model,) = load_config(write(config_text(repo="./checkpoints/tiny"))).models

    assert model.source.is_local
    assert model.source.local_dir == (tmp_path / "checkpoints" / "tiny").resolve()
    assert model.source.repo == "./checkpoints/tiny", "the repo stays as written"


def test_parent_absolute_and_home_paths_name_local_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    sibling = tmp_path / "sibling-model"
    sibling.mkdir()
    home = tmp_path / "home"
    (home / "models" / "x").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    path = project / "config.toml"
    path.write_text(
        'dest_prefix = "r8.im/alice/"\n'
        '[models.parent]\nhuggingface.repo = "../sibling-model"\n'
        f"[models.absolute]\nhuggingface.repo = {toml_string(str(sibling))}\n"
        '[models.home]\nhuggingface.repo = "~/models/x"\n'
    )

    config = load_config(path)

    assert config.model("parent").source.local_dir == sibling.resolve()
    assert config.model("absolute").source.local_dir == sibling.resolve()
    assert config.model("home").source.local_dir == (home / "models" / "x").resolve()


def test_a_local_path_with_odd_characters_is_just_a_path(write, tmp_path: Path) -> None:
    odd = "./we'ird $(touch pwned) \"dir\"; rm -rf ~"
    (tmp_path / odd).mkdir()

    (model,) = load_config(write(config_text(repo=odd))).models

    assert model.source.local_dir == (tmp_path / odd).resolve()
    assert not (tmp_path / "pwned").exists()


def test_a_missing_local_directory_is_reported_with_its_resolved_path(write, tmp_path) -> None:
    path = write(config_text(repo="./no such $(dir)"))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="huggingface.repo")
    assert str(tmp_path / "no such $(dir)") in error.message
    assert "does not exist" in error.message and "fix the path" in error.message
    assert "Hub id" not in error.message


def test_a_local_directory_takes_no_version(write, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    path = write(config_text('huggingface.version = "main"', repo="./ckpt"))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="huggingface.version")
    assert "remove huggingface.version" in error.message


# --- the two example files ------------------------------------------------------------------------


@pytest.mark.skipif(not LMQL_EXAMPLE.exists(), reason=f"LMQL's example is not at {LMQL_EXAMPLE}")
def test_lmqls_own_config_loads_unchanged() -> None:
    config = load_config(LMQL_EXAMPLE)

    assert config.dest_prefix is None
    assert len(config.models) == 18
    assert config.models[0].name == "llama-2-7b-hf--lmql-4bit"
    quantizations = [model.args.quantization for model in config.models]
    assert {q: quantizations.count(q) for q in quantizations} == {"4bit": 6, "8bit": 6, "none": 6}
    repos = {model.source.repo for model in config.models}
    assert repos == {
        f"meta-llama/Llama-2-{size}-{kind}hf"
        for size in ("7b", "13b", "70b")
        for kind in ("", "chat-")
    }
    for model in config.models:
        assert model.name.startswith(model.source.repo.split("/")[1].lower() + "--lmql")


def test_our_example_loads() -> None:
    config = load_config(EXAMPLE)

    assert config.dest_prefix is None
    repos = {model.source.repo for model in config.models}
    assert {
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Meta-Llama-3-8B",
        "mistralai/Mistral-7B-v0.1",
        "microsoft/Phi-3-mini-4k-instruct",
    } <= repos
    assert all(model.args.quantization == "8bit" for model in config.models)
    assert any(model.source.revision is not None for model in config.models)


def test_our_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = ["huggingface.repo", "huggingface.version", "config.dtype"]
    keys += [f"config.{f.name}" for f in dataclasses.fields(ModelArgs) if f.name != "from_pretrained"]
    keys += [f"cog.{f.name}" for f in dataclasses.fields(CogOptions)]

    undocumented = [k for k in keys if not re.search(rf"^#.*\b{re.escape(k)}\b", text, re.M)]

    assert undocumented == []


def commented_assignments(text: str) -> list[str]:
    """The ``# section.key = value`` lines of the example, without the ``#``."""
    pattern = re.compile(r"^#\s*((?:config|cog|huggingface)\.\w+\s*=.*)$", re.M)
    return [line for line in pattern.findall(text) if not line.startswith("huggingface.repo")]


@pytest.mark.parametrize("line", commented_assignments(EXAMPLE.read_text()))
def test_each_commented_example_line_is_valid(write, line: str) -> None:
    load_config(write(config_text(line)))


# --- errors that stop before validation -----------------------------------------------------------


def test_a_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"

    with pytest.raises(ConfigNotFoundError) as raised:
        load_config(path)

    assert raised.value.path == path
    assert str(path) in str(raised.value)
    assert "cp config.toml.example config.toml" in str(raised.value)


def test_a_syntax_error_gives_line_and_column(write) -> None:
    path = write(config_text("config.load_in_8bit = yes"))

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert not isinstance(raised.value, ConfigErrors)
    assert raised.value.path == path
    assert str(path) in str(raised.value)
    assert "line 4, column 23" in str(raised.value)


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'dest_prefix = "r8.im/\xff/"\n')

    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


# --- one mistake, one error -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    id: str
    text: str
    model: str | None
    key: str | None
    says: tuple[str, ...]
    """Fragments of the message: what is wrong and how to fix it."""


def _one(
    id: str, *lines: str, key: str | None, says: tuple[str, ...], model: str | None = "tiny", **kw
) -> Mistake:
    return Mistake(id, config_text(*lines, **kw), model, key, says)


MISTAKES = [
    # top level
    Mistake(
        "unknown-top-level-key",
        "modles = 1\n" + config_text(),
        None,
        "modles",
        ("unknown key", "did you mean 'models'?"),
    ),
    Mistake(
        "missing-dest-prefix",
        '[models.tiny]\nhuggingface.repo = "owner/tiny"\n',
        None,
        "dest_prefix",
        ("missing", 'add dest_prefix = "r8.im/ACCOUNT/"', "Replicate account name"),
    ),
    _one("dest-not-a-string", dest="5", model=None, key="dest_prefix", says=('expected "r8.im/ACCOUNT/"', "got the integer 5")),
    _one(
        "dest-other-registry",
        dest='"docker.io/alice/"',
        model=None,
        key="dest_prefix",
        says=('expected "r8.im/ACCOUNT/"', "the string 'docker.io/alice/'"),
    ),
    _one(
        "dest-with-model",
        dest='"r8.im/alice/tiny"',
        model=None,
        key="dest_prefix",
        says=('expected "r8.im/ACCOUNT/"', "appends each model name"),
    ),
    _one(
        "dest-uppercase-account",
        dest='"r8.im/Alice/"',
        model=None,
        key="dest_prefix",
        says=("'Alice' is not a valid Replicate account name", "for example 'alice'"),
    ),
    Mistake(
        "no-models",
        'dest_prefix = "r8.im/alice/"\n[models]\n',
        None,
        "models",
        ("no models to build", "[models.llama-2-7b-hf]", "huggingface.repo"),
    ),
    Mistake(
        "models-not-a-table",
        'dest_prefix = "r8.im/alice/"\nmodels = "tiny"\n',
        None,
        "models",
        ("expected [models.NAME] tables, got the string 'tiny'",),
    ),
    # a [models.NAME] table
    Mistake(
        "model-not-a-table",
        'dest_prefix = "r8.im/alice/"\n[models]\ntiny = "owner/tiny"\n',
        "tiny",
        None,
        ("expected a table [models.tiny]", "got the string 'owner/tiny'"),
    ),
    Mistake(
        "dotted-model-name",
        'dest_prefix = "r8.im/alice/"\n[models.mistral-7b-v0.1]\nhuggingface.repo = "a/b"\n',
        "mistral-7b-v0.1",
        None,
        ("splits the TOML key", '[models."mistral-7b-v0.1"]'),
    ),
    _one(
        "key-outside-its-section",
        "load_in_8bit = true",
        key="load_in_8bit",
        says=("did you mean 'config.load_in_8bit'?",),
    ),
    _one(
        "misspelt-section",
        'hugginface.version = "main"',
        key="hugginface",
        says=("did you mean 'huggingface'?",),
    ),
    _one(
        "unknown-section",
        "zzz = 1",
        key="zzz",
        says=("unknown key", "huggingface, config, cog"),
    ),
    _one(
        "section-not-a-table",
        'config = "8bit"',
        key="config",
        says=("expected a table of keys like config.", "got the string '8bit'"),
    ),
    # huggingface.*
    _one(
        "missing-repo",
        'huggingface.version = "main"',
        repo=None,
        key="huggingface.repo",
        says=("missing", 'huggingface.repo = "owner/name"', '"./my-model"'),
    ),
    _one(
        "no-huggingface-at-all",
        "config.load_in_8bit = true",
        repo=None,
        key="huggingface.repo",
        says=("missing",),
    ),
    Mistake(
        "repo-not-a-string",
        'dest_prefix = "r8.im/alice/"\n[models.tiny]\nhuggingface.repo = 7\n',
        "tiny",
        "huggingface.repo",
        ("expected a string in quotes, got the integer 7",),
    ),
    _one(
        "revision-for-version",
        'huggingface.revision = "main"',
        key="huggingface.revision",
        says=("did you mean 'version'?",),
    ),
    _one(
        "empty-version",
        'huggingface.version = ""',
        key="huggingface.version",
        says=("non-empty", "remove the key"),
    ),
    # config.*
    _one(
        "misspelt-config-key",
        "config.load_in_8bits = true",
        key="config.load_in_8bits",
        says=("unknown key", "did you mean 'load_in_8bit'?"),
    ),
    _one(
        "config-key-a-typo-away",
        "config.concurency = 4",
        key="config.concurency",
        says=("unknown key; did you mean 'concurrency'?",),
    ),
    _one(
        "config-key-the-runtime-sets",
        "config.local_files_only = false",
        key="config.local_files_only",
        says=("always loads from the image's files",),
    ),
    _one(
        "config-key-not-an-identifier",
        'config."max-memory" = 3',
        key="config.max-memory",
        says=("not a from_pretrained argument name",),
    ),
    _one(
        "config-value-a-date",
        "config.since = 2024-01-01",
        key="config.since",
        says=("cannot be passed to from_pretrained",),
    ),
    _one(
        "bool-as-string",
        'config.load_in_8bit = "yes"',
        key="config.load_in_8bit",
        says=("expected true or false, got the string 'yes'",),
    ),
    _one(
        "bool-as-integer",
        "config.trust_remote_code = 1",
        key="config.trust_remote_code",
        says=("expected true or false, got the integer 1",),
    ),
    _one(
        "unknown-dtype",
        'config.torch_dtype = "fp16"',
        key="config.torch_dtype",
        says=("expected one of 'float16', 'bfloat16', 'float32', 'auto'", "the string 'fp16'"),
    ),
    _one(
        "misspelt-dtype-through-alias",
        'config.dtype = "bfloat61"',
        key="config.dtype",
        says=("did you mean 'bfloat16'?",),
    ),
    _one(
        "dtype-twice",
        'config.torch_dtype = "float16"',
        'config.dtype = "float16"',
        key="config.dtype",
        says=("same option as 'config.torch_dtype'", "keep only one"),
    ),
    _one(
        "both-quantizations",
        "config.load_in_8bit = true",
        "config.load_in_4bit = true",
        key="config.load_in_4bit",
        says=("both true", "keep only one"),
    ),
    _one(
        "batch-size-zero",
        "config.max_batch_size = 0",
        key="config.max_batch_size",
        says=("at least 1, got the integer 0",),
    ),
    _one(
        "batch-size-as-string",
        'config.max_batch_size = "8"',
        key="config.max_batch_size",
        says=("got the string '8'",),
    ),
    _one(
        "batch-size-as-bool",
        "config.max_batch_size = true",
        key="config.max_batch_size",
        says=("at least 1, got true",),
    ),
    _one(
        "batch-size-fraction",
        "config.max_batch_size = 2.5",
        key="config.max_batch_size",
        says=("got the number 2.5",),
    ),
    _one(
        "concurrency-zero",
        "config.concurrency = 0",
        key="config.concurrency",
        says=("at least 1, got the integer 0",),
    ),
    _one(
        "sdk-version-unquoted",
        "cog.sdk_version = 0.23",
        key="cog.sdk_version",
        says=('a Cog version in quotes like "0.23.1"', "got the number 0.23"),
    ),
    _one(
        "device-map-not-a-string",
        "config.device_map = 0",
        key="config.device_map",
        says=("expected a string in quotes, got the integer 0",),
    ),
    _one(
        "attention-as-list",
        'config.attn_implementation = ["sdpa"]',
        key="config.attn_implementation",
        says=("got a list",),
    ),
    # cog.*
    _one("misspelt-cog-key", "cog.gpus = true", key="cog.gpus", says=("did you mean 'gpu'?",)),
    _one(
        "gpu-as-string",
        'cog.gpu = "yes"',
        key="cog.gpu",
        says=("expected true or false, got the string 'yes'",),
    ),
    _one(
        "cuda-as-number",
        "cog.cuda = 12.4",
        key="cog.cuda",
        says=('CUDA version in quotes like "12.4"', "got the number 12.4"),
    ),
    _one("cuda-as-word", 'cog.cuda = "twelve"', key="cog.cuda", says=("the string 'twelve'",)),
    _one(
        "cuda-without-gpu",
        "cog.gpu = false",
        'cog.cuda = "12.4"',
        key="cog.cuda",
        says=("cog.gpu = false", "remove one"),
    ),
    _one(
        "python-as-number",
        "cog.python_version = 3.10",
        key="cog.python_version",
        says=("'3.10', '3.11', '3.12', '3.13' in quotes", "got the number 3.1"),
    ),
    _one(
        "python-too-old",
        'cog.python_version = "3.9"',
        key="cog.python_version",
        says=("expected one of '3.10', '3.11', '3.12', '3.13'",),
    ),
    _one(
        "concurrency-on-python-3.10",
        'cog.python_version = "3.10"',
        key="cog.python_version",
        says=("cog build refuses concurrency above 1 on Python 3.10", "config.concurrency = 1"),
    ),
    _one(
        "concurrency-absurd",
        "config.concurrency = 9223372036854775807",
        key="config.concurrency",
        says=("expected at most 128", "predictions one container runs at once"),
    ),
    _one(
        "batch-size-absurd",
        "config.max_batch_size = 100000",
        key="config.max_batch_size",
        says=("expected at most 1024",),
    ),
    _one(
        "prefix-cache-absurd",
        "config.prefix_cache_mb = 99999999999",
        key="config.prefix_cache_mb",
        says=("expected at most 1048576",),
    ),
    _one(
        "cuda-in-other-digits",
        'cog.cuda = "\u0661\u0662.\u0664"',
        key="cog.cuda",
        says=('CUDA version in quotes like "12.4"',),
    ),
    _one(
        "sdk-in-other-digits",
        'cog.sdk_version = "\u0660.\u0662\u0663.\u0661"',
        key="cog.sdk_version",
        says=('a Cog version in quotes like "0.23.1"',),
    ),
    _one(
        "requirements-not-a-list",
        'cog.extra_requirements = "sentencepiece==0.2.0"',
        key="cog.extra_requirements",
        says=("expected a list",),
    ),
    _one(
        "requirement-not-a-string",
        "cog.extra_requirements = [3]",
        key="cog.extra_requirements",
        says=("as strings like 'name==1.0'", "got the integer 3"),
    ),
    _one(
        "system-package-not-a-list",
        'cog.system_packages = "ffmpeg"',
        key="cog.system_packages",
        says=("expected a list",),
    ),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m.id)
def test_each_mistake_is_reported_where_it_is_with_the_fix(write, mistake: Mistake) -> None:
    path = write(mistake.text)

    error = only_problem(path)

    assert_located(error, path, model=mistake.model, key=mistake.key)
    for fragment in mistake.says:
        assert fragment in error.message


@pytest.mark.parametrize(
    "requirement",
    [
        "sentencepiece",
        "torch>=2.0",
        "torch~=2.0",
        "torch==2.*",
        "torch==",
        "numpy==1.0 ; python_version < '3.12'",
        "a==1\n-r other.txt",
    ],
)
def test_unpinned_requirements_are_refused(write, requirement: str) -> None:
    path = write(config_text(f"cog.extra_requirements = [{toml_string(requirement)}]"))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="cog.extra_requirements")
    assert "is not pinned" in error.message and "name==version" in error.message


@pytest.mark.parametrize(
    "requirement",
    [
        "git+https://github.com/huggingface/transformers",
        "transformers @ git+https://github.com/huggingface/transformers",
        "pkg @ https://example.com/pkg-1.0.whl",
        "https://example.com/pkg-1.0.whl",
        "-e .",
        "--extra-index-url https://example.com/simple",
    ],
)
def test_url_and_git_requirements_are_refused(write, requirement: str) -> None:
    path = write(config_text(f"cog.extra_requirements = [{toml_string(requirement)}]"))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="cog.extra_requirements")
    assert "pin a release from PyPI" in error.message


@pytest.mark.parametrize("package", ["libfoo; rm -rf /", "FFmpeg", "x", "-y", "a b", "$(id)"])
def test_bad_apt_package_names_are_refused(write, package: str) -> None:
    path = write(config_text(f"cog.system_packages = [{toml_string(package)}]"))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="cog.system_packages")
    assert f"{package!r} is not an apt package name" in error.message


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", "Upper", "-x", "x-", "a..b", "/etc", "~root", "a b", "", "é", "x" * 101]
)
def test_model_names_that_could_escape_work_or_break_a_push_are_refused(write, name: str) -> None:
    path = write(config_text(name=name))

    error = only_problem(path)

    assert_located(error, path, model=name, key=None)
    assert "not a valid Replicate model name" in error.message
    assert "lowercase letters and digits" in error.message


@pytest.mark.parametrize(
    "repo",
    [
        "gpt2",
        "meta-llama/Llama 2",
        "$(touch pwned)",
        'a"b/c',
        "owner/name'; rm -rf ~",
        "a/b/c",
        "a--b/c",
        "owner/.hidden",
        "owner/name.git",
    ],
)
def test_repos_that_are_not_hub_ids_are_refused(write, repo: str) -> None:
    path = write(config_text(repo=repo))

    error = only_problem(path)

    assert_located(error, path, model="tiny", key="huggingface.repo")
    assert f"{repo!r} is not a valid Hugging Face Hub id" in error.message
    assert "a local directory must start with" in error.message


# --- many mistakes, one report -------------------------------------------------------------------


def test_every_problem_is_reported_at_once(write) -> None:
    path = write(
        'dest_prefix = "r8.im/Alice/"\n'
        "[models.Good-Name]\n"
        'huggingface.repo = "owner/x"\n'
        "config.load_in_8bits = true\n"
        "[models.second]\n"
        'huggingface.repo = "owner/y"\n'
        'config.max_batch_size = "8"\n'
        'cog.extra_requirements = ["torch", "ok==1.0", "git+https://example.com/x"]\n'
        "[models.third]\n"
        "config.load_in_4bit = true\n"
    )

    with pytest.raises(ConfigErrors) as raised:
        load_config(path)

    located = [(error.model, error.key) for error in raised.value.errors]
    assert located == [
        (None, "dest_prefix"),
        ("Good-Name", None),
        ("Good-Name", "config.load_in_8bits"),
        ("second", "config.max_batch_size"),
        ("second", "cog.extra_requirements"),
        ("second", "cog.extra_requirements"),
        ("third", "huggingface.repo"),
    ]
    report = str(raised.value)
    assert report.startswith("7 problems in the configuration:")
    assert all(str(error) in report for error in raised.value.errors)


def test_a_single_problem_is_still_a_config_errors(write) -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_config(write(config_text("cog.gpus = true")))
    assert len(raised.value.errors) == 1
    assert str(raised.value) == str(raised.value.errors[0])


def test_loading_writes_nothing(write, tmp_path: Path) -> None:
    path = write(config_text("config.load_in_8bits = true"))
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(ConfigErrors):
        load_config(path)
    load_config(write(config_text()))

    assert sorted(tmp_path.rglob("*")) == before


# --- the name rules on their own ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "0", "tiny", "llama-2-7b-hf--lmql-4bit", "mistral-7b-v0.1-8bit", "a_b", "a__b", "x" * 100],
)
def test_good_model_names(name: str) -> None:
    assert model_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("Upper", "upper"), ("../evil", "evil"), ("a/b", "a-b"), ("My Model!", "my-model")],
)
def test_bad_model_names_come_with_a_suggestion(name: str, suggestion: str) -> None:
    problem = model_name_problem(name)
    assert problem is not None and f"(for example {suggestion!r})" in problem
    assert model_name_problem(suggestion) is None


@pytest.mark.parametrize("name", ["a._b", "a___b", "a.", "_a", ".."])
def test_names_outside_the_image_reference_grammar_are_refused(name: str) -> None:
    assert model_name_problem(name) is not None


@pytest.mark.parametrize(
    ("owner", "problem"),
    [
        ("alice", False),
        ("stability-ai", False),
        ("my_org", False),
        ("a1", False),
        ("YOURACCOUNT", True),
        ("a.b", True),
        ("-a", True),
        ("a-", True),
        ("", True),
        ("a/b", True),
    ],
)
def test_replicate_owner_names(owner: str, problem: bool) -> None:
    assert (replicate_owner_problem(owner) is not None) == problem


HUB_IDS = [
    "meta-llama/Llama-2-7b-hf",
    "mistralai/Mistral-7B-v0.1",
    "microsoft/Phi-3-mini-4k-instruct",
    "openai-community/gpt2",
    "Org_1/model.v2",
    "_a/b_",
    "a/b--c",
    "a/b..c",
    "a./b",
    "-a/b",
    "a/.b",
    "a/b-",
    "a/b.git",
    "a b/c",
    "a/b/c",
    "a/",
    "/a",
    "a/" + "x" * 96,
    "a/" + "x" * 97,
    "x" * 97 + "/a",
]


@pytest.mark.parametrize("repo", HUB_IDS)
def test_hub_ids_follow_huggingface_hubs_own_rules(repo: str) -> None:
    try:
        validate_repo_id(repo)
        hub_accepts = True
    except HFValidationError:
        hub_accepts = False

    assert (hub_repo_id_problem(repo) is None) == hub_accepts


def test_owner_less_hub_ids_are_refused_though_the_hub_redirects_them() -> None:
    validate_repo_id("gpt2")
    problem = hub_repo_id_problem("gpt2")
    assert problem is not None and "'owner/name'" in problem


def test_project_config_looks_models_up_by_name(write) -> None:
    config = load_config(write(config_text()))
    assert isinstance(config, ProjectConfig)
    assert config.model("tiny") is config.models[0]
    with pytest.raises(KeyError):
        config.model("absent")


def test_serving_keys_reach_the_model_args(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'dest_prefix = "r8.im/alice/"\n[models.m]\nhuggingface.repo = "acme/x"\n'
        "config.prefix_cache_mb = 0\nconfig.log_predictions = true\n"
    )
    args = load_config(path).models[0].args
    assert (args.prefix_cache_mb, args.log_predictions) == (0, True)
    path.write_text(
        'dest_prefix = "r8.im/alice/"\n[models.m]\nhuggingface.repo = "acme/x"\n'
        "config.prefix_cache_mb = -1\n"
    )
    with pytest.raises(ConfigErrors, match="prefix_cache_mb.*at least 0"):
        load_config(path)


def test_the_default_cog_sdk_is_the_one_the_tests_run() -> None:
    """cog.yaml pins the image's Cog SDK to COG_SDK_VERSION: it must be what `make venv` installs,
    which every test of the runtime behind the real Cog server runs on."""
    from importlib.metadata import version

    assert CogOptions().sdk_version == version("cog") == version("coglet")


def test_one_prediction_at_a_time_builds_on_python_3_10(write) -> None:
    path = write(config_text('cog.python_version = "3.10"', "config.concurrency = 1"))
    model = load_config(path).models[0]
    assert (model.cog.python_version, model.args.concurrency) == ("3.10", 1)


# What PyPI's Linux wheel of each torch release is built for (its cuda-toolkit requirement).
TORCH_WHEEL_CUDAS = {"2.13.0": "13.0"}


def test_the_image_cuda_is_the_one_the_pinned_torch_wheel_needs() -> None:
    """cog's torch-to-CUDA table ends before torch 2.13, so cog.yaml names build.cuda itself:
    when the torch pin moves, TORCH_WHEEL_CUDA must move with it."""
    pins = paths.RUNTIME_REQUIREMENTS.read_text().splitlines()
    [torch] = [line.split("==")[1] for line in pins if line.startswith("torch==")]
    assert TORCH_WHEEL_CUDAS[torch] == TORCH_WHEEL_CUDA == CogOptions().image_cuda
    assert CogOptions(gpu=False).image_cuda is None
    assert CogOptions(cuda="12.8").image_cuda == "12.8"


def test_a_bundled_example_without_its_checkpoint_says_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "EXAMPLES_DIR", tmp_path / "examples")
    example = tmp_path / "examples" / "tiny" / "config.toml"
    example.parent.mkdir(parents=True)
    example.write_text(config_text(repo="./model"))

    error = only_problem(example)

    assert "make example" in str(error) and "not made yet" in str(error)
    assert (error.model, error.key) == ("tiny", "huggingface.repo")


def test_examples_dir_resolves_to_the_bundled_example() -> None:
    """Through the ``lmtp_cog.examples`` package mapping (the wheel itself: tests/test_packaging)."""
    assert (paths.EXAMPLES_DIR / "tiny" / "config.toml").is_file()


def test_other_config_keys_are_model_arguments_for_from_pretrained(write) -> None:
    """LMQL's docs: the config section holds any value for the model_args dictionary."""
    path = write(
        config_text(
            "config.load_in_8bit = true",
            "config.low_cpu_mem_usage = true",
            'config.max_memory = {0 = "20GiB", cpu = "60GiB"}',
            "config.rope_scaling = {type = 'linear', factor = 2.0}",
        )
    )
    args = load_config(path).models[0].args
    assert args.load_in_8bit
    assert args.from_pretrained == (
        ("low_cpu_mem_usage", True),
        ("max_memory", {"0": "20GiB", "cpu": "60GiB"}),
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
    )


def test_our_example_says_what_other_config_keys_do() -> None:
    assert re.search(r"^#.*other config\.\* key.*from_pretrained", EXAMPLE.read_text(), re.M)
