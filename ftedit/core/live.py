"""LiveWeights: a model's weights kept equal to base + the active deltas, in id order.

DESIGN.md's invariant, enforced here and nowhere else: for every tensor an edit touches,
``live = compose(base, deltas of the active ids in id order)`` (:func:`~ftedit.core.deltas.compose`
is the single definition of that value). One verb pair moves the weights:

- :meth:`LiveWeights.set_active` makes the live weights base + the deltas of ``ids``;
- :meth:`LiveWeights.temporarily` does the same for the body of a ``with`` and restores the
  previous set afterwards, bit for bit (diff, evaluation, base-model answers).

Values are always recomputed from the base copy, never patched by subtraction, and every new
value is checked finite before any weight is written, so a bad delta leaves the model untouched.
The float32 sums of the last two sets made live are kept per tensor (on CPU), so a set that
starts with one of them (an edit stacked on the live ones; the live set again after
``temporarily``) adds only the deltas past it: the same adds in the same order, the same bits,
and packed deltas (:class:`~storage.codec.Packed`) are rebuilt only for those. Partial sums
at every ``MARK_EVERY``-th edit are kept as marks, sparser as the stack grows past
``MARKS_BYTES``: a revert of edit i sums again from the mark at or below i, not from the
base. Rebuilt packed deltas are kept too, first come, up to ``REBUILT_BYTES`` (a revert of an
old edit sums every edit after it again: 4 ms per rebuilt 576 x 1536 matrix against 0.15 ms
per kept one).
Torch only: the Workspace (store + model) and the evaluation loop both build on it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ftedit.core.deltas import Deltas, partial_sums
from ftedit.errors import IntegrityError

REBUILT_BYTES = 1 << 30  # rebuilt packed deltas kept at most (~75 default edits of this model)
MARKS_BYTES = 256 << 20  # partial sums kept at most (18 marks of a default edit's 4 tensors)
MARK_EVERY = 16  # first spacing of the partial sums kept (doubled when over MARKS_BYTES)


class LiveWeights:
    """One model's live weights plus the base copies and deltas they are composed from."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        # named_parameters() walks every module (~10 ms on a 30-layer model: half a revert's
        # budget), so the table is built once; the Parameter objects never change.
        self.params: dict[str, torch.nn.Parameter] = dict(model.named_parameters())
        # name -> CPU clone of the untouched tensor, in its original dtype (taken before the
        # first write to that tensor)
        self.base: dict[str, torch.Tensor] = {}
        self.deltas: dict[int, Deltas] = {}  # id -> deltas that may be made active
        self.active: list[int] = []  # ids composing the live weights now, in order
        # name -> up to two (the Deltas summed, in order; float32 base + their values on CPU)
        self.sums: dict[str, list[tuple[tuple[Deltas, ...], torch.Tensor]]] = {}
        # (id of a Deltas, name) -> (that Deltas, its rebuilt value), within rebuilt_budget
        self.rebuilt: dict[tuple[int, str], tuple[Deltas, torch.Tensor]] = {}
        self.rebuilt_budget = REBUILT_BYTES
        self.rebuilt_bytes = 0
        # name -> {k: up to two (the first k Deltas summed; float32 base + their values on
        # CPU), the last used last} for k a multiple of mark_every: a revert of edit i sums
        # again from a mark at or below i (two, so that a temporary set's marks do not
        # replace the live set's)
        self.marks: dict[str, dict[int, list[tuple[tuple[Deltas, ...], torch.Tensor]]]] = {}
        self.mark_every, self.marks_budget, self.marks_bytes = MARK_EVERY, MARKS_BYTES, 0

    def keep_base(self, names: Iterable[str]) -> None:
        """Copy base values before the first write; every write goes through here first."""
        for name in names:
            if name not in self.base and name in self.params:
                self.base[name] = self.params[name].detach().to("cpu", copy=True)

    def names_of(self, ids: Iterable[int]) -> set[str]:
        """Tensors the (registered) deltas of ``ids`` touch."""
        return {n for i in ids for n in self.deltas[i]}

    def set_active(self, ids: Iterable[int], names: Iterable[str] | None = None) -> list[str]:
        """Make the live weights base + the deltas of ``ids`` (id order) and return the names
        written. ``names`` (default: the tensors of every id entering or leaving the active
        set) are recomputed; a caller that knows more (an edit whose blob is unusable) passes
        them. Every value is computed and checked before any weight is written."""
        ids = sorted(set(ids))
        if names is None:
            names = self.names_of(set(ids) ^ set(self.active))
        names = sorted(set(names))
        self.keep_base(names)
        held = {id(d) for d in self.deltas.values()}  # forget what no registered id holds
        for key in [k for k in self.rebuilt if k[0] not in held]:
            self.rebuilt_bytes -= self.rebuilt.pop(key)[1].nbytes
        stack = [self.deltas[i] for i in ids]
        new, sums = {}, {}
        for name in names:
            if name not in self.params or name not in self.base:
                raise IntegrityError(f"tensor {name} is not a parameter of this model")
            p = self.params[name]
            parts = tuple(d for d in stack if name in d)
            sums[name] = parts, self._sum(name, parts)
            value = sums[name][1].to(p.dtype)  # compose's one cast
            # NaN/inf anywhere makes the sum non-finite; only an overflowing sum of finite
            # values needs the elementwise test (a full isfinite costs ~10x the sum).
            if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():
                raise IntegrityError(
                    f"stacking gives non-finite values in {name}; nothing was changed"
                )
            new[name] = value
        with torch.no_grad():
            for name, value in new.items():
                self.params[name].copy_(value)
        for name, (parts, acc) in sums.items():
            if parts:  # the base needs no keeping
                kept = [e for e in self.sums.get(name, []) if not _same(e[0], parts)]
                self.sums[name] = [*kept[-1:], (parts, acc)]
        self.active = ids
        return names

    def _sum(self, name: str, parts: tuple[Deltas, ...]) -> torch.Tensor:
        """float32 base + the ``parts``' deltas of ``name`` in order (compose's sum), continued
        from the longest kept sum or mark whose deltas are the first of ``parts`` (same
        objects); marks passed on the way are kept."""
        start, done = self.base[name], 0
        marks = self.marks.setdefault(name, {})
        held = [e for at in marks.values() for e in at]
        for kept, acc in sorted([*self.sums.get(name, []), *held], key=lambda e: -len(e[0])):
            if _starts(parts, kept):
                start, done = acc, len(kept)
                break
        for k, at in marks.items():  # this set's marks: the last to go
            if k <= done:
                at.sort(key=lambda e: _starts(parts, e[0]))
        values = (self._value(d, name) for d in parts[done:])
        for k, acc in enumerate(partial_sums(start, values, "cpu"), start=done):
            if k > done and k % self.mark_every == 0:
                self._mark(name, parts[:k], acc)
        return acc

    def _mark(self, name: str, prefix: tuple[Deltas, ...], acc: torch.Tensor) -> None:
        """Keep ``acc`` (the sum of ``prefix``) as a mark; over ``marks_budget``, keep every
        other mark only, and so on (a longer stack gets sparser marks)."""
        at = self.marks[name].setdefault(len(prefix), [])
        if any(_same(e[0], prefix) for e in at):
            at.sort(key=lambda e: _same(e[0], prefix))  # used again: the last to go
            return
        if len(at) == 2:
            self.marks_bytes -= at.pop(0)[1].nbytes
        at.append((prefix, acc.clone()))
        self.marks_bytes += acc.nbytes
        while self.marks_bytes > self.marks_budget:
            self.mark_every *= 2
            for marks in self.marks.values():
                for k in [k for k in marks if k % self.mark_every]:
                    self.marks_bytes -= sum(e[1].nbytes for e in marks.pop(k))

    def _value(self, d: Deltas, name: str) -> torch.Tensor:
        """``d[name]``; a packed one's rebuilt value kept while the budget allows."""
        if not d.packed(name):
            return d[name]
        key = (id(d), name)
        if key in self.rebuilt and self.rebuilt[key][0] is d:
            return self.rebuilt[key][1]
        value = d[name]
        if self.rebuilt_bytes + value.nbytes <= self.rebuilt_budget:
            self.rebuilt[key] = d, value
            self.rebuilt_bytes += value.nbytes
        return value

    @contextmanager
    def temporarily(
        self, ids: Sequence[int], names: Iterable[str] | None = None
    ) -> Iterator[list[str]]:
        """Run the body on base + the deltas of ``ids``; afterwards the previous active set is
        live again, bit for bit (also when the body raises). Yields the names written."""
        old = list(self.active)
        if names is None:
            names = self.names_of(set(ids) ^ set(old))
        names = sorted(set(names))
        written = self.set_active(ids, names)
        try:
            yield written
        finally:
            self.set_active(old, names)


def _starts(parts: tuple[Deltas, ...], prefix: tuple[Deltas, ...]) -> bool:
    """``parts`` begins with the same Deltas objects as ``prefix`` (its last first: a quick
    no), without copying either."""
    n = len(prefix)
    return (
        n <= len(parts)
        and (not n or parts[n - 1] is prefix[-1])
        and all(map(operator.is_, prefix, parts))
    )


def _same(a: tuple[Deltas, ...], b: tuple[Deltas, ...]) -> bool:
    """The same Deltas objects in the same order."""
    return len(a) == len(b) and _starts(a, b)


@contextmanager
def applied(model: torch.nn.Module, deltas: Deltas) -> Iterator[None]:
    """Run the body with ``deltas`` on top of ``model``'s current weights (taken as the base);
    afterwards the touched tensors hold their previous bits again."""
    live = LiveWeights(model)
    live.deltas[0] = deltas
    with live.temporarily([0]):
        yield
