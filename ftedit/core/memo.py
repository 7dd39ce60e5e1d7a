"""One-entry caches of values computed from the weights, valid while those weights are unchanged.

Edits reach weights only by in-place writes (``LiveWeights.set_active``, compute_deltas' write
back), and each write bumps the tensor's ``_version``; a key holds those counts and the storage
addresses of the weights a value reads, so any write, or a new tensor, misses. compute_deltas
writes the weights back bit for bit, so it carries what was cached before it across with
:meth:`WeightsMemo.written_back` (the same bits under new counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def weights_state(params: Iterable) -> tuple:
    """What changes whenever one of ``params`` is written in place or replaced."""
    params = list(params)
    return tuple(p._version for p in params), tuple(p.data_ptr() for p in params)


class WeightsMemo:
    """The value for the last key asked: recomputed when the key changes."""

    def __init__(self) -> None:
        self._key: Any = None
        self._value: Any = None

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if self._key != key:
            self.clear()  # a compute that raises leaves nothing stale behind
            self._value = compute()
            self._key = key
        return self._value

    def written_back(self, before: dict[int, int], after: dict[int, int]) -> None:
        """Tensors (by storage address) were written back bit for bit, their ``_version``
        counts going from ``before`` to ``after``: a cached value computed while they held
        those bits holds again (one it was not computed from them at ``before`` stays stale).
        Keys end in :func:`weights_state`, so this serves whatever was cached last, whichever
        weights or arguments it read (an FT-L edit of block 0 keeps the pool that the next
        default edit reads)."""
        if self._key is None or len(self._key) < 2:
            return
        *head, versions, ptrs = self._key
        if any(p in before and v != before[p] for v, p in zip(versions, ptrs, strict=True)):
            return
        moved = tuple(after.get(p, v) for v, p in zip(versions, ptrs, strict=True))
        self._key = (*head, moved, ptrs)

    def clear(self) -> None:
        self._key = self._value = None
