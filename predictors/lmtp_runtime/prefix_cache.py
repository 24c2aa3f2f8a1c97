"""Keep the KV cache of recent sequences, so a prompt that extends one computes only its new tokens.

LMQL's constrained decoding re-sends the *whole* growing prompt on every call (LMTP.md §7): a
long query is dozens of predictions whose prompts share all but their last few tokens, and
``distribution`` scores several continuations of one prompt. Without reuse every call pays for
the whole prompt again; with it a call computes only the tokens after its longest cached prefix.

An entry is the keys and values of one sequence the model has been fed (a prompt plus the tokens
generated after it), one ``[1, heads, length, head_dim]`` tensor pair per layer. Entries are
immutable once stored: a hit hands out views cropped to the common prefix, and whoever builds a
cache on them must copy or concatenate, never write into them (transformers' ``DynamicLayer``
grows by ``torch.cat``, which only ever makes new tensors).

Lookup is a longest-common-prefix match against every entry, so a prompt that diverges mid-way
from a cached one still reuses the shared part. Memory is bounded by a byte budget (least
recently used entries go first) and by an entry count (lookup cost grows with it). An entry
that is a prefix of a newer one is dropped when the newer one is stored: the newer one serves
every lookup the older one would, so LMQL's growing prompt occupies one entry, not thirty.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

log = logging.getLogger(__name__)

KeysValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per model layer, ``(keys, values)``, each ``[1, heads, length, head_dim]``."""

CPU_BUDGET_MB = 1024
"""The budget on a CPU when ``serve.prefix_cache_mb`` is not set."""
GPU_BUDGET_SHARE = 0.25
"""The share of free GPU memory (measured once the model is loaded) used by default on CUDA.

Modest on purpose: decode batches need memory too. A batch that runs out of memory anyway gets
the cache emptied before it is retried (see :mod:`.scheduler`)."""
MAX_ENTRIES = 64
"""Every lookup compares the prompt with every entry; LMQL keeps far fewer branches alive."""
MIB = 1024 * 1024
MIN_REUSE = 4
"""Fewest shared tokens worth reusing. A shorter hit (the BOS every prompt starts with) saves
nothing worth seeding a cache, and under LLM.int8, whose fp16 outlier columns are chosen over
every row of a forward pass, it would tie a prompt's numbers to another prompt's history."""


@dataclass(frozen=True)
class CachedSequence:
    """The keys and values of one fed sequence. Never modified once stored."""

    tokens: np.ndarray
    """The token ids, read-only."""
    layers: KeysValues
    nbytes: int


@dataclass(frozen=True)
class PrefixHit:
    """The first ``length`` tokens of a prompt are those of ``entry``: their KV can be reused."""

    entry: CachedSequence
    length: int

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (not copies) of layer ``index``'s keys and values for the shared prefix."""
        keys, values = self.entry.layers[index]
        return keys[..., : self.length, :], values[..., : self.length, :]


class PrefixCache:
    """Recently fed sequences and their KV caches, least recently used first.

    Not thread-safe, like the engine that owns it.
    """

    def __init__(self, *, budget_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        self.budget_bytes = budget_bytes
        self.max_entries = max_entries
        self.bytes_used = 0
        self.reused_tokens = 0
        """Prompt tokens not computed thanks to hits, since this cache was made."""
        self._entries: OrderedDict[bytes, CachedSequence] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[CachedSequence]:
        """The entries, least recently used first."""
        return list(self._entries.values())

    def longest_prefix(self, tokens: Sequence[int], *, limit: int) -> PrefixHit | None:
        """The entry sharing the longest prefix with ``tokens``, capped at ``limit`` tokens.

        ``limit`` keeps the tokens whose logits the caller needs out of the reused part: they
        must be fed again even when cached. ``None`` when fewer than :data:`MIN_REUSE` tokens
        (within the limit) are shared. A hit counts as a use of its entry.
        """
        if limit <= 0 or not self._entries:
            return None
        query = _as_array(tokens)
        best_key, best_length = None, 0
        for key, entry in self._entries.items():
            length = common_prefix_length(query, entry.tokens)
            if length > best_length:
                best_key, best_length = key, length
        length = min(best_length, limit)
        if best_key is None or length < MIN_REUSE:
            return None
        self._entries.move_to_end(best_key)
        hit = PrefixHit(self._entries[best_key], length)
        self.reused_tokens += hit.length
        return hit

    def cached_length(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of ``tokens`` some entry holds. A look, not a use: nothing is
        counted or reordered (the caller is deciding whether to compute them)."""
        query = _as_array(tokens)
        return max((common_prefix_length(query, entry.tokens) for entry in self.entries), default=0)

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether an entry starts with ``tokens`` (then storing them adds nothing); a use."""
        query = _as_array(tokens)
        for key, entry in self._entries.items():
            if _starts_with(entry.tokens, query):
                self._entries.move_to_end(key)
                return True
        return False

    def add(self, tokens: Sequence[int], layers: KeysValues) -> None:
        """Store the KV of ``tokens`` (``layers[i]`` is layer i's ``[1, heads, len, dim]`` pair).

        The tensors are kept as they are when they own exactly their storage (the usual case:
        a finished single-row batch hands over its cache), else compacted first, so the budget
        counts what the entry really holds. Entries that ``tokens`` extends are dropped; least
        recently used ones go until the new entry fits. An entry bigger than the whole budget
        is not stored.
        """
        query = _as_array(tokens)
        if any(keys.shape[-2] != len(query) for keys, _ in layers):
            raise ValueError(f"the KV to cache does not cover the {len(query)} tokens given")
        nbytes = sum(keys.nbytes + values.nbytes for keys, values in layers)
        if not len(query) or nbytes > self.budget_bytes:
            return
        layers = tuple((_compact(keys), _compact(values)) for keys, values in layers)
        for key, entry in list(self._entries.items()):
            if _starts_with(query, entry.tokens):
                self._drop(key)
        while self._entries and (
            self.bytes_used + nbytes > self.budget_bytes or len(self._entries) >= self.max_entries
        ):
            self._drop(next(iter(self._entries)))
        key = query.tobytes()
        self._entries[key] = CachedSequence(tokens=query, layers=layers, nbytes=nbytes)
        self.bytes_used += nbytes

    def clear(self) -> None:
        """Forget every entry (their memory is freed once no running batch uses it)."""
        self._entries.clear()
        self.bytes_used = 0

    def _drop(self, key: bytes) -> None:
        self.bytes_used -= self._entries.pop(key).nbytes


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def shared_prefixes(
    sequences: Sequence[Sequence[int]], *, limits: Sequence[int], minimum: int
) -> list[tuple[int, ...]]:
    """The longest prefixes, of at least ``minimum`` tokens, that two or more rows start with.

    Computing such a prefix once and caching it lets every row that shares it reuse it, instead
    of each row computing it again (``distribution`` scores several continuations of one prompt
    in one prediction; ``sample(n=k)`` decodes k streams of one prompt). A row never shares more
    than ``limits[row]`` tokens: the rest must be fed anyway, for their logits.

    In lexicographic order every row's longest common prefix with any other row is the one it
    has with a neighbour, so comparing neighbours finds them all. A prefix that another one
    extends is left out: the cache matches any common prefix of an entry, so the longer one
    serves the rows of both.
    """
    arrays = [_as_array(sequence) for sequence in sequences]
    order = sorted(range(len(arrays)), key=lambda row: arrays[row].tolist())
    found: set[tuple[int, ...]] = set()
    for before, after in zip(order, order[1:]):
        length = min(
            common_prefix_length(arrays[before], arrays[after]), limits[before], limits[after]
        )
        if length >= minimum:
            found.add(tuple(arrays[before][:length].tolist()))
    return sorted(
        prefix
        for prefix in found
        if not any(len(other) > len(prefix) and other[: len(prefix)] == prefix for other in found)
    )


def _starts_with(tokens: np.ndarray, prefix: np.ndarray) -> bool:
    return len(tokens) >= len(prefix) and common_prefix_length(tokens, prefix) == len(prefix)


def supports_prefix_reuse(cache: Cache) -> bool:
    """Whether ``cache``, after a forward pass, holds every token's KV in croppable layers.

    Only transformers' plain ``DynamicLayer`` qualifies: sliding-window layers drop old tokens,
    quantized and linear-attention layers keep no per-token keys and values to slice, and
    layers that share another layer's KV hold nothing. Models with any of those run without
    reuse (the cache is simply not made).
    """
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
        for layer in layers
    )


def budget_bytes(*, device: torch.device, size_mb: int | None, gpu_share: float | None) -> int:
    """The cache's byte budget: ``size_mb`` if set, else a share of free GPU memory or 1 GiB.

    Args:
        device: where the model's input embeddings are (the KV of the first layers lives there).
        size_mb: ``serve.prefix_cache_mb`` from model_settings.json; ``0`` disables reuse.
        gpu_share: ``serve.prefix_cache_gpu_share``; ``None`` means :data:`GPU_BUDGET_SHARE`.
    """
    if size_mb is not None:
        return size_mb * MIB
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * (GPU_BUDGET_SHARE if gpu_share is None else gpu_share))
    return CPU_BUDGET_MB * MIB


def _as_array(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.array(tokens, dtype=np.int64)
    array.flags.writeable = False
    return array


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if it is contiguous and owns exactly its storage, else a compact copy.

    A view of a bigger batch tensor would keep all of it alive, unaccounted for.
    """
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
