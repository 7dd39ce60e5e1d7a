"""One-entry caches of values computed from the weights, valid while those weights are unchanged.

Edits reach weights only by in-place writes (``LiveWeights.set_active``, compute_deltas' write
back), and each write bumps the tensor's ``_version``; a key holds those counts and the storage
addresses of the weights a value reads, so any write, or a new tensor, misses. compute_deltas
writes the weights back bit for bit, so it carries what was cached before it across with
:meth:`WeightsMemo.rekey` (the same bits under new counts).
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

    def rekey(self, before: tuple, after: tuple) -> None:
        """The weights ``before`` described were written back bit for bit and are now
        ``after``: what was cached for them still holds."""
        if self._key == before:
            self._key = after

    def clear(self) -> None:
        self._key = self._value = None
