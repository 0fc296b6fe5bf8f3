"""An LRU store of per-sequence keys/values, looked up by the longest cached prefix of a token-id sequence.

The transformers backend keeps, after each turn, the keys/values of the prefix and the turn (less
its last token, whose keys/values were never computed); the next turn of the same branch starts
with that sequence, so only its new tokens need to run through the model. Entries are keyed by
(length, polynomial hash of the ids) and confirmed by comparing the stored ids, so a hash collision
cannot return another sequence's states. The least recently used entries are evicted once the
stored tensors exceed a byte budget.

Deviations: none (an implementation detail of the transformers backend, not part of the method).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (heads, seq, head_dim)

_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, hence invertible modulo 2**64
_HASH_BASE_INV = np.uint64(pow(int(_HASH_BASE), -1, 2**64))


def prefix_hashes(ids: Sequence[int]) -> np.ndarray:
    """Polynomial hash of every prefix: out[i] = sum_{j<=i} (ids[j]+1) * B^(i-j) mod 2**64.

    Vectorised as B^i * cumsum((ids[j]+1) * B^-j); uint64 arithmetic wraps, which is the modulus.
    """
    n = len(ids)
    x = np.asarray(ids, dtype=np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        inv_pows = np.cumprod(np.concatenate([[np.uint64(1)], np.full(n - 1, _HASH_BASE_INV)]))
        pows = np.cumprod(np.concatenate([[np.uint64(1)], np.full(n - 1, _HASH_BASE)]))
        return pows * np.cumsum(x * inv_pows)


@dataclass
class _Entry:
    ids: tuple[int, ...]
    kv: KV
    nbytes: int


class PrefixKVCache:
    """LRU map from an exact token-id prefix to the keys/values of one sequence.

    `lookup` returns the longest cached prefix of the given ids; hashes narrow the candidates and
    the stored ids confirm a hit, so a hash collision can never return another sequence's state.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._length_counts: dict[int, int] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._length_counts.clear()
        self.nbytes = 0

    def lookup(self, ids: Sequence[int], max_len: int) -> tuple[int, KV | None]:
        """Longest cached prefix of `ids` no longer than `max_len`: (its length, its states)."""
        if not self._entries or max_len <= 0:
            return 0, None
        hashes = prefix_hashes(ids[:max_len])
        for length in sorted((n for n in self._length_counts if n <= max_len), reverse=True):
            key = (length, int(hashes[length - 1]))
            entry = self._entries.get(key)
            if entry is not None and entry.ids == tuple(ids[:length]):
                self._entries.move_to_end(key)
                return length, entry.kv
        return 0, None

    def put(self, ids: tuple[int, ...], kv: KV) -> None:
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.capacity_bytes or not ids:
            return
        key = (len(ids), int(prefix_hashes(ids)[-1]))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = _Entry(ids, kv, nbytes)
        self._length_counts[len(ids)] = self._length_counts.get(len(ids), 0) + 1
        self.nbytes += nbytes
        while self.nbytes > self.capacity_bytes:
            (length, _), old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
            self._length_counts[length] -= 1
            if self._length_counts[length] == 0:
                del self._length_counts[length]
