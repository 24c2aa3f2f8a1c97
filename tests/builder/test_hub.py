"""Resolving and fetching weights, through the real huggingface_hub client and a local Hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmtp_cog import errors
from lmtp_cog.config import HuggingFaceSource
from lmtp_cog.hub import fetch, resolve, select_files
from lmtp_cog.lockfile import Lockfile

DOCS = {"README.md": "# tiny\n", "LICENSE": "do what you like\n", "USE_POLICY.md": "be nice\n"}
CLUTTER = {
    "tf_model.h5": b"h5",
    "flax_model.msgpack": b"msgpack",
    "model.gguf": b"gguf",
    "original/consolidated.00.pth": b"pth",
    "original/params.json": "{}",
    "onnx/model.onnx": b"onnx",
    "consolidated.pt": b"pt",
    ".gitattributes": "*.bin filter=lfs\n",
    "modeling_tiny.py": "# custom code\n",
    "docs/notes.md": "not needed\n",
}


def files_in(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


def hub(repo: str, revision: str | None = None) -> HuggingFaceSource:
    return HuggingFaceSource(repo=repo, revision=revision)


@pytest.fixture
def on(hub_server, hf_cache):
    """Keyword arguments pointing resolve/fetch at the stand-in and this test's cache."""
    return {"endpoint": hub_server.endpoint, "cache_dir": hf_cache}


@pytest.fixture
def cluttered(tiny_checkpoint):
    """A repo with both weight formats, docs, and files for other runtimes."""
    return {
        **files_in(tiny_checkpoint("safetensors")),
        **files_in(tiny_checkpoint("bin")),
        **DOCS,
        **CLUTTER,
    }


# --- selection (pure) -----------------------------------------------------------------------------


def no_index(path: str):
    raise AssertionError(f"read {path} although no index should be followed")


def test_select_prefers_safetensors_and_ignores_other_runtimes():
    paths = ["config.json", "model.safetensors", "pytorch_model.bin", *DOCS, *CLUTTER]

    selected = select_files(paths, use_safetensors=None, read_index=no_index)

    assert selected == ["LICENSE", "README.md", "USE_POLICY.md", "config.json", "model.safetensors"]


def test_select_takes_tokenizer_and_generation_files_at_top_level_only():
    tokenizer = [
        "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
        "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
        "chat_template.json", "generation_config.json", "LICENSE.txt",
    ]  # fmt: skip
    paths = ["model.safetensors", *tokenizer, "sub/tokenizer.json", "original/tokenizer.model"]

    selected = select_files(paths, use_safetensors=None, read_index=no_index)

    assert set(selected) == {"model.safetensors", *tokenizer}


def test_select_follows_the_index_and_keeps_subfolder_paths():
    index = {"weight_map": {"a": "weights/part-1.safetensors", "b": "weights/part-2.safetensors"}}
    paths = [
        "config.json", "model.safetensors.index.json", "weights/part-1.safetensors",
        "weights/part-2.safetensors", "weights/unused.safetensors", "pytorch_model.bin",
    ]  # fmt: skip
    read = []

    selected = select_files(
        paths, use_safetensors=None, read_index=lambda p: read.append(p) or index
    )

    assert read == ["model.safetensors.index.json"]
    assert selected == [
        "config.json", "model.safetensors.index.json",
        "weights/part-1.safetensors", "weights/part-2.safetensors",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("paths", "use_safetensors", "weights"),
    [
        # Like from_pretrained: the single file wins over an index beside it.
        (["model.safetensors", "model.safetensors.index.json"], None, ["model.safetensors"]),
        (["pytorch_model.bin"], None, ["pytorch_model.bin"]),
        (["model.safetensors", "pytorch_model.bin"], False, ["pytorch_model.bin"]),
        (["model.safetensors", "pytorch_model.bin"], True, ["model.safetensors"]),
    ],
)
def test_select_picks_weights_as_from_pretrained_does(paths, use_safetensors, weights):
    assert select_files(paths, use_safetensors=use_safetensors, read_index=no_index) == weights


@pytest.mark.parametrize(
    ("paths", "use_safetensors", "hint"),
    [
        (["config.json", "tf_model.h5", "model.gguf", "original/consolidated.00.pth"], None,
         "no weights transformers can load"),
        (["config.json", "pytorch_model.bin"], True, "use_safetensors = true"),
        (["config.json", "model.safetensors"], False, "use_safetensors = false"),
    ],
)  # fmt: skip
def test_select_without_usable_weights_says_why(paths, use_safetensors, hint):
    with pytest.raises(errors.NoWeightsError, match=hint):
        select_files(paths, use_safetensors=use_safetensors, read_index=no_index)


@pytest.mark.parametrize(
    ("shard", "problem"),
    [("model-2.safetensors", "lacks"), ("../elsewhere.safetensors", "outside the repo")],
)
def test_select_refuses_an_index_naming_missing_or_outside_shards(shard, problem):
    index = {"weight_map": {"a": "model-1.safetensors", "b": shard}}
    paths = ["model.safetensors.index.json", "model-1.safetensors"]

    with pytest.raises(errors.NoWeightsError, match=problem):
        select_files(paths, use_safetensors=None, read_index=lambda _: index)


def test_select_takes_top_level_code_only_with_trust_remote_code():
    paths = ["model.safetensors", "modeling_tiny.py", "configuration_tiny.py", "scripts/convert.py"]

    plain = select_files(paths, use_safetensors=None, read_index=no_index)
    trusting = select_files(
        paths, use_safetensors=None, read_index=no_index, trust_remote_code=True
    )

    assert plain == ["model.safetensors"]
    assert trusting == ["configuration_tiny.py", "model.safetensors", "modeling_tiny.py"]


# --- resolve and fetch through the Hub stand-in ---------------------------------------------------


@pytest.mark.parametrize("shape", ["safetensors", "sharded", "bin", "bin-sharded"])
def test_fetch_downloads_exactly_the_checkpoint(shape, tiny_checkpoint, hub_repo, hub_server, on):
    checkpoint = files_in(tiny_checkpoint(shape))
    repo = hub_repo(shape)

    resolved = resolve(hub(repo), model_name="tiny", **on)
    local = fetch(resolved, **on)

    assert hub_server.downloaded(repo) == sorted(checkpoint)
    assert resolved.commit == hub_server.head(repo)
    assert resolved.weight_format == ("bin" if shape.startswith("bin") else "safetensors")
    assert {f.path: f.size for f in resolved.files} == {
        p: f.stat().st_size for p, f in checkpoint.items()
    }
    assert {p: f.read_bytes() for p, f in local.items()} == {
        p: f.read_bytes() for p, f in checkpoint.items()
    }


def test_resolved_hashes_are_the_hubs(hub_repo, on, tiny_checkpoint):
    repo = hub_repo("sharded")
    checkpoint = files_in(tiny_checkpoint("sharded"))

    resolved = resolve(hub(repo), model_name="tiny", **on)

    for file in resolved.files:
        content = checkpoint[file.path].read_bytes()
        if file.path.endswith(".safetensors"):  # LFS: the Hub lists the content's sha256
            assert (file.sha256, file.blob_id) == (hashlib.sha256(content).hexdigest(), None)
        else:  # in git: the blob id
            git_blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
            assert (file.sha256, file.blob_id) == (None, git_blob)


def test_clutter_is_never_downloaded(cluttered, tiny_checkpoint, hub_repo, hub_server, on):
    repo = hub_repo(cluttered)

    fetch(resolve(hub(repo), model_name="tiny", **on), **on)

    expected = {*files_in(tiny_checkpoint("safetensors")), *DOCS}
    assert hub_server.downloaded(repo) == sorted(expected)


def test_use_safetensors_false_fetches_the_bin_weights(
    cluttered, tiny_checkpoint, hub_repo, hub_server, on
):
    repo = hub_repo(cluttered)

    resolved = resolve(hub(repo), model_name="tiny", use_safetensors=False, **on)
    fetch(resolved, **on)

    assert resolved.weight_format == "bin"
    assert hub_server.downloaded(repo) == sorted({*files_in(tiny_checkpoint("bin")), *DOCS})


def test_trust_remote_code_also_fetches_the_models_code(cluttered, hub_repo, hub_server, on):
    repo = hub_repo(cluttered)

    fetch(resolve(hub(repo), model_name="tiny", trust_remote_code=True, **on), **on)

    assert "modeling_tiny.py" in hub_server.downloaded(repo)


def test_shards_in_a_subfolder_keep_their_paths(tiny_checkpoint, hub_repo, hub_server, on):
    checkpoint = files_in(tiny_checkpoint("sharded"))
    index = json.loads(checkpoint.pop("model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    files = {p: f for p, f in checkpoint.items() if p not in shards}
    files |= {f"weights/{s}": checkpoint[s] for s in shards}
    index["weight_map"] = {k: f"weights/{v}" for k, v in index["weight_map"].items()}
    files["model.safetensors.index.json"] = json.dumps(index)
    repo = hub_repo(files)

    local = fetch(resolve(hub(repo), model_name="tiny", **on), **on)

    assert {f"weights/{s}" for s in shards} <= set(local)
    assert hub_server.downloaded(repo) == sorted(files)
    for shard in shards:
        assert local[f"weights/{shard}"].read_bytes() == checkpoint[shard].read_bytes()


def test_a_sharded_checkpoint_fetched_and_linked_loads(hub_repo, on, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtp_cog.checkpoints import link_checkpoints

    repo = hub_repo("sharded")
    local = fetch(resolve(hub(repo), model_name="tiny", **on), **on)
    link_checkpoints(local, tmp_path / "checkpoints")

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "checkpoints")

    assert model.config.num_hidden_layers == 2
    assert tokenizer("Hello world").input_ids


def test_a_second_fetch_makes_no_request(hub_repo, hub_server, on):
    repo = hub_repo("sharded")
    resolved = resolve(hub(repo), model_name="tiny", **on)
    first = fetch(resolved, **on)
    before = len(hub_server.requests)

    second = fetch(resolved, **on)

    assert second == first
    assert len(hub_server.requests) == before  # none at all, telemetry included


def test_a_fresh_process_rebuilding_from_cache_asks_the_hub_nothing(
    hub_repo, hub_server, on, tmp_path
):
    repo = hub_repo("safetensors")
    resolved = resolve(hub(repo), model_name="tiny", **on)
    fetch(resolved, **on)
    lock = tmp_path / "config.lock.json"
    Lockfile(lock).with_entry(resolved).save()
    before = len(hub_server.requests)
    # A rebuild from the lock (online, all cached), then an --offline resolve and fetch.
    script = f"""
from pathlib import Path
from lmtp_cog.config import HuggingFaceSource
from lmtp_cog.hub import fetch, resolve
from lmtp_cog.lockfile import Lockfile
on = {{"endpoint": {hub_server.endpoint!r}, "cache_dir": Path({str(on["cache_dir"])!r})}}
fetch(Lockfile.load(Path({str(lock)!r})).entry("tiny"), **on)
offline = resolve(HuggingFaceSource(repo={repo!r}), model_name="tiny", offline=True, **on)
fetch(offline, offline=True, **on)
"""
    # HF_ENDPOINT too, so that a request huggingface_hub makes on its own would reach the log.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": hub_server.endpoint}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)

    assert hub_server.requests[before:] == []


def test_a_tag_resolves_to_its_commit(hub_repo, hub_server, on):
    repo = hub_repo("safetensors")
    tagged = hub_server.tag(repo, "v1")
    hub_server.commit(repo, {"config.json": "{}", "model.safetensors": b"newer"})

    resolved = resolve(hub(repo, "v1"), model_name="tiny", **on)

    assert (resolved.revision, resolved.commit) == ("v1", tagged)


def test_a_locked_commit_wins_over_the_moved_branch(hub_repo, hub_server, on):
    repo = hub_repo("safetensors")
    locked = resolve(hub(repo), model_name="tiny", **on)
    moved = hub_server.commit(repo, {"config.json": "{}", "model.safetensors": b"v2"})
    already = len(hub_server.requests_for(repo))

    again = resolve(hub(repo), model_name="tiny", locked_commit=locked.commit, **on)
    local = fetch(again, **on)
    pinned = [r.path for r in hub_server.requests_for(repo)[already:]]
    updated = resolve(hub(repo), model_name="tiny", **on)

    assert again == locked
    assert pinned and all(locked.commit in path for path in pinned)  # never asked for "main"
    assert local["model.safetensors"].read_bytes() != b"v2"
    assert updated.commit == moved != locked.commit
    assert [f.path for f in updated.files] == ["config.json", "model.safetensors"]


# --- errors ---------------------------------------------------------------------------------------


def test_gated_repo_without_token_says_where_to_accept_the_license(hub_repo, hub_server, on):
    repo = hub_repo("safetensors", gated_token="hf_secret")

    with pytest.raises(errors.GatedRepoError) as caught:
        resolve(hub(repo), model_name="tiny", **on)

    message = str(caught.value)
    assert "model 'tiny'" in message and f"{hub_server.endpoint}/{repo}" in message
    assert "HF_TOKEN" in message and "hf auth login" in message
    assert hub_server.downloaded(repo) == []


def test_gated_repo_with_a_wrong_token_is_refused(hub_repo, on):
    repo = hub_repo("safetensors", gated_token="hf_secret")

    with pytest.raises(errors.GatedRepoError):
        resolve(hub(repo), model_name="tiny", token="hf_wrong", **on)


def test_gated_repo_with_the_token_downloads(hub_repo, hub_server, on, tiny_checkpoint):
    repo = hub_repo("sharded", gated_token="hf_secret")

    resolved = resolve(hub(repo), model_name="tiny", token="hf_secret", **on)
    fetch(resolved, token="hf_secret", **on)

    assert hub_server.downloaded(repo) == sorted(files_in(tiny_checkpoint("sharded")))
    assert "hf_secret" not in repr(resolved)


def test_private_repo_without_token_reads_as_missing(hub_repo, on):
    repo = hub_repo("safetensors", gated_token="hf_secret", private=True)

    with pytest.raises(errors.RepoNotFoundError, match="private"):
        resolve(hub(repo), model_name="tiny", **on)
    assert resolve(hub(repo), model_name="tiny", token="hf_secret", **on).files


def test_missing_repo_names_the_model_and_repo(on):
    with pytest.raises(errors.RepoNotFoundError) as caught:
        resolve(hub("acme/no-such-model"), model_name="tiny", **on)

    assert "model 'tiny'" in str(caught.value)
    assert "acme/no-such-model" in str(caught.value)


def test_an_invalid_repo_id_is_reported_as_such(on):
    with pytest.raises(errors.RepoNotFoundError, match="owner/name"):
        resolve(hub("acme/tiny/extra"), model_name="tiny", **on)


def test_missing_revision_names_the_revision(hub_repo, on):
    repo = hub_repo("safetensors")

    with pytest.raises(errors.RevisionNotFoundError, match="'v9'.*huggingface.version"):
        resolve(hub(repo, "v9"), model_name="tiny", **on)


def test_repo_without_weights_is_refused(hub_repo, on):
    repo = hub_repo({"config.json": "{}", "model.gguf": b"gguf"})

    with pytest.raises(errors.NoWeightsError, match=f"model 'tiny' \\({repo}\\)"):
        resolve(hub(repo), model_name="tiny", **on)


def test_unreachable_hub_suggests_offline(hf_cache):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"

    with pytest.raises(errors.HubUnreachableError, match="--offline"):
        resolve(hub("acme/tiny"), model_name="tiny", endpoint=closed, cache_dir=hf_cache)


# --- offline --------------------------------------------------------------------------------------


def test_offline_without_cache_says_to_build_online(hub_repo, hub_server, on):
    repo = hub_repo("safetensors")

    with pytest.raises(errors.NotInCacheError, match="without --offline") as caught:
        resolve(hub(repo), model_name="tiny", offline=True, **on)

    assert "model 'tiny'" in str(caught.value)
    assert hub_server.requests_for(repo) == []


@pytest.mark.parametrize("locked", [True, False], ids=["locked-commit", "cached-branch"])
def test_offline_with_cache_resolves_and_fetches_the_same(locked, hub_repo, hub_server, on):
    repo = hub_repo("sharded")
    online = resolve(hub(repo), model_name="tiny", **on)
    local = fetch(online, **on)
    hub_server.commit(repo, {"config.json": "{}", "model.safetensors": b"moved on"})
    before = len(hub_server.requests)

    offline = resolve(
        hub(repo),
        model_name="tiny",
        offline=True,
        locked_commit=online.commit if locked else None,
        **on,
    )

    assert offline == online
    assert fetch(offline, offline=True, **on) == local
    assert len(hub_server.requests) == before


def test_offline_fetch_names_the_files_missing_from_the_cache(hub_repo, on):
    repo = hub_repo("sharded")
    resolved = resolve(hub(repo), model_name="tiny", **on)  # downloads the index only

    with pytest.raises(errors.NotInCacheError, match="model-00001-of-00003.safetensors"):
        fetch(resolved, offline=True, **on)


# --- local directories ----------------------------------------------------------------------------


def test_local_directory_is_selected_and_hashed_in_place(cluttered, tmp_path):
    model_dir = tmp_path / "model"
    for path, content in cluttered.items():
        target = model_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(
            content.read_bytes() if isinstance(content, Path) else
            content.encode() if isinstance(content, str) else content
        )  # fmt: skip
    source = HuggingFaceSource(repo="./model", local_dir=model_dir)

    resolved = resolve(source, model_name="tiny", endpoint="http://127.0.0.1:9")
    local = fetch(resolved, local_dir=model_dir, endpoint="http://127.0.0.1:9")

    assert (resolved.repo, resolved.commit) == ("./model", None)
    assert "model.safetensors" in local and "pytorch_model.bin" not in local
    assert local == {f.path: model_dir / f.path for f in resolved.files}
    for file in resolved.files:
        assert file.sha256 == hashlib.sha256(local[file.path].read_bytes()).hexdigest()


def test_missing_local_directory_is_reported(tmp_path):
    source = HuggingFaceSource(repo="./nowhere", local_dir=tmp_path / "nowhere")

    with pytest.raises(errors.RepoNotFoundError, match="does not exist"):
        resolve(source, model_name="tiny")


# --- the stand-in itself speaks the client's protocol --------------------------------------------


def test_the_stand_in_serves_snapshot_download_and_tree_listings(hub_repo, hub_server, hf_cache):
    from huggingface_hub import HfApi, snapshot_download

    files = {"config.json": "{}", "weights/model.safetensors": b"w" * 10, "README.md": "hi"}
    repo = hub_repo(files)
    api = HfApi(endpoint=hub_server.endpoint)

    folder = snapshot_download(repo, endpoint=hub_server.endpoint, cache_dir=hf_cache)
    top = {(e.path, type(e).__name__) for e in api.list_repo_tree(repo)}
    tree = {e.path: e for e in api.list_repo_tree(repo, recursive=True)}

    assert {p: f.read_bytes() for p, f in files_in(Path(folder)).items()} == {
        p: c.encode() if isinstance(c, str) else c for p, c in files.items()
    }
    assert top == {
        ("config.json", "RepoFile"), ("README.md", "RepoFile"), ("weights", "RepoFolder")
    }
    assert tree["weights/model.safetensors"].lfs.sha256 == hashlib.sha256(b"w" * 10).hexdigest()
    assert tree["config.json"].lfs is None
