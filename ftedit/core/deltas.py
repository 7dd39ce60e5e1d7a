"""Deltas: what an edit adds to the base weights, as a value type.

DESIGN.md's invariant lives here, in one function (:func:`compose`): the live value of a
parameter is ``cast(base + d_1 + d_2 + ...)`` over the active edits in id order, summed in
float32 from the untouched base. Applying, removing and replaying all go through it, so a
fresh process that replays the store gets the same bits as the session that made the edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

import torch

from storage.codec import Packed  # pure tensor arithmetic: a stored form's one definition

_LAYER_RE = re.compile(r"\.(\d+)\.")


class Deltas(Mapping[str, torch.Tensor]):
    """Parameter name -> float32 CPU tensor (edited minus base). A value given as a
    :class:`~storage.codec.Packed` (a compact stored form's parts) is kept packed and rebuilt
    at each lookup, the same bits each time: a stack of rank-32 edits holds 135 KB per
    576 x 1536 matrix instead of 3.5 MB (``LiveWeights`` keeps the running sum, so stacking
    one more edit rebuilds only that edit's tensors)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor | Packed] | None = None):
        self._t = {
            k: v if isinstance(v, Packed) else v.detach().to("cpu", torch.float32).contiguous()
            for k, v in (tensors or {}).items()
        }

    def __getitem__(self, name: str) -> torch.Tensor:
        v = self._t[name]
        return v.tensor() if isinstance(v, Packed) else v

    def __contains__(self, name: object) -> bool:  # Mapping's would rebuild a packed value
        return name in self._t

    def packed(self, name: str) -> bool:
        """Whether ``name``'s value is held packed (rebuilt at each lookup)."""
        return isinstance(self._t[name], Packed)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._t))

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"Deltas({', '.join(f'{k}: {tuple(v.shape)}' for k, v in self.items())})"

    def _combine(self, other: Deltas, sign: float) -> Deltas:
        out = dict(self.items())
        for k, v in other.items():
            if k in out and out[k].shape != v.shape:
                raise ValueError(
                    f"shape mismatch for {k}: {tuple(out[k].shape)} vs {tuple(v.shape)}"
                )
            out[k] = out[k] + sign * v if k in out else sign * v
        return Deltas(out)

    def __add__(self, other: Deltas) -> Deltas:
        return self._combine(other, 1.0)

    def __sub__(self, other: Deltas) -> Deltas:
        return self._combine(other, -1.0)

    def __neg__(self) -> Deltas:
        return Deltas({k: -v for k, v in self.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deltas) or set(self) != set(other):
            return False
        return all(torch.equal(self[k], other[k]) for k in self)

    __hash__ = None  # mutable-free but tensor-valued: not hashable

    def norms(self) -> dict[str, float]:
        """Frobenius norm of each tensor's delta (summed in float64: a float32 sum over a
        million elements is off by ~1e-3 relative, enough to show a cosine above 1)."""
        return {k: float(v.double().pow(2).sum().sqrt()) for k, v in self.items()}

    def layer_norms(self) -> dict[int, float]:
        """Frobenius norm per transformer block (tensors grouped by the block number in the name)."""
        sq: dict[int, float] = {}
        for k, v in self.items():
            m = _LAYER_RE.search(k)
            layer = int(m.group(1)) if m else -1
            sq[layer] = sq.get(layer, 0.0) + float(v.double().pow(2).sum())
        return {layer: s**0.5 for layer, s in sorted(sq.items())}

    def norm(self) -> float:
        return sum(n**2 for n in self.norms().values()) ** 0.5

    def max_abs(self) -> float:
        return max((float(v.abs().max()) for v in self.values() if v.numel()), default=0.0)

    def cosine(self, other: Deltas) -> float:
        """Cosine similarity of the two deltas flattened over the union of their tensors."""
        dot = sum(float((self[k].double() * other[k].double()).sum()) for k in self if k in other)
        na, nb = self.norm(), other.norm()
        return dot / (na * nb) if na > 0 and nb > 0 else 0.0

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(v).all()) for v in self.values())

    @property
    def nbytes(self) -> int:
        """Bytes held (a packed value: its parts')."""
        return sum(
            v.nbytes if isinstance(v, Packed) else v.numel() * v.element_size()
            for v in self._t.values()
        )


def compose(
    base: torch.Tensor,
    deltas: Iterable[torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The single source of truth for a live value: cast(base + d_1 + ... in float32)."""
    return accumulate(base, deltas, device).to(dtype)


def accumulate(
    start: torch.Tensor, deltas: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> torch.Tensor:
    """:func:`compose`'s sum before its one cast: a float32 copy of ``start`` plus each delta
    in order. A kept sum continued with more deltas is, add for add, the sum made whole (each
    add rounds the same way on any device: no reduction whose order a library chooses)."""
    *_, acc = partial_sums(start, deltas, device)
    return acc


def partial_sums(
    start: torch.Tensor, deltas: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> Iterator[torch.Tensor]:
    """:func:`accumulate`'s float32 sum after 0, 1, 2, ... of ``deltas``: one tensor, added to
    in place between yields (clone what is kept)."""
    device = device if device is not None else start.device
    acc = start.to(device=device, dtype=torch.float32, copy=True)
    yield acc
    for d in deltas:
        acc += d.to(device=device, dtype=torch.float32)
        yield acc
