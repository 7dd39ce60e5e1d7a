"""Compact stored forms of a delta tensor (edit file format 2), pure tensor arithmetic.

A form turns a float32 delta into a few small tensors ("parts") and back. The way back
(:func:`reconstruct`) is the ONLY definition of the delta an edit applies: the writer applies
``reconstruct(encode(d))``, never ``d``, and a reader gets the same bits on any machine,
because every step is an elementwise IEEE-754 operation in a fixed order (no BLAS, no
reduction whose order a library may choose). The forms:

``dense``       float32 as is (format 1 writes only this).
``lowrank:R``   truncated SVD: ``u`` [rows, R] and ``v`` [R, cols] in bfloat16, the singular
                values split evenly between them. Rebuilt as sum_i u[:, i] * v[i, :] in
                float32, i ascending: a product of two bfloat16 values is exact in float32,
                so only the R additions round, always in the same order.
``sign``        one bit per element (1 = negative, packed little-endian into uint8) and one
                float32 scale per row (the row's mean |d|, which minimises the squared error
                of a sign code); rebuilt as scale[row] * (+1 or -1), exact.

Tensors that are not 2-D, or that a form would not make smaller, stay dense.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

FORM_RE = re.compile(r"dense|sign|lowrank:[1-9][0-9]{0,4}")
SUFFIXES = {"dense": (), "sign": (".sign", ".scale"), "lowrank": (".u", ".v")}


def parse_form(form: str) -> tuple[str, int]:
    """``"lowrank:32"`` -> ("lowrank", 32); ``"sign"`` -> ("sign", 0); ValueError otherwise."""
    if not isinstance(form, str) or not FORM_RE.fullmatch(form):
        raise ValueError(
            f"stored form must be 'dense', 'sign' or 'lowrank:R' (R a positive int), got {form!r}"
        )
    kind, _, rank = form.partition(":")
    return kind, int(rank or 0)


def form_for(t: torch.Tensor, form: str) -> str:
    """The form a tensor is actually stored in: ``form`` if it is 2-D and gets smaller."""
    kind, rank = parse_form(form)
    if kind == "dense" or t.dim() != 2 or rank >= min(t.shape):  # full rank is no saving
        return "dense"
    rows, cols = t.shape
    dense_bytes = 4 * rows * cols
    size = {"sign": (rows * cols + 7) // 8 + 4 * rows, "lowrank": 2 * rank * (rows + cols)}
    return form if size[kind] < dense_bytes else "dense"


def encode(t: torch.Tensor, form: str) -> dict[str, torch.Tensor]:
    """The parts (suffix -> tensor) that store ``t`` in ``form`` (see :func:`form_for`)."""
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    kind, rank = parse_form(form_for(t, form))
    if kind == "dense":
        return {"": t}
    if kind == "sign":
        bits = (t < 0).reshape(-1)
        bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)]).reshape(-1, 8).to(torch.uint8)
        packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
        return {".sign": packed, ".scale": t.abs().mean(1).contiguous()}
    u, v = _top_singular(t.double(), rank)
    return {".u": u.to(torch.bfloat16).contiguous(), ".v": v.to(torch.bfloat16).contiguous()}


def _top_singular(t: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors u [rows, rank], v [rank, cols] of the best rank-``rank`` approximation, each
    carrying the square root of the singular values. Through the eigenvectors of the smaller
    Gram matrix (float64): 4x faster than a full SVD of a 576x1536 delta, same top part."""
    if t.shape[0] > t.shape[1]:
        v, u = _top_singular(t.T, rank)
        return u.T, v.T
    evals, evecs = torch.linalg.eigh(t @ t.T)  # ascending; t = Q S Vh, t t^T = Q S^2 Q^T
    q = evecs[:, -rank:].flip(1)
    root = evals[-rank:].flip(0).clamp(min=0).sqrt().sqrt()  # sqrt of the singular values
    scaled = q.T @ t  # = S Vh (top rows)
    safe = torch.where(root > 0, root, torch.ones_like(root))
    return q * root, torch.where(root[:, None] > 0, scaled / safe[:, None], 0.0)


def reconstruct(
    parts: dict[str, torch.Tensor], form: str, shape: tuple[int, ...] | list[int]
) -> torch.Tensor:
    """The float32 delta that ``parts`` store (bit-exact, deterministic). ValueError if the
    parts do not fit ``form`` and ``shape``."""
    kind, shape = _check(parts, form, shape)
    if kind == "dense":
        return parts[""].to(torch.float32)
    rows, cols = shape
    if kind == "sign":
        bits = (parts[".sign"][:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
        neg = bits.reshape(-1)[: rows * cols].reshape(rows, cols).bool()
        scale = parts[".scale"][:, None].expand(rows, cols)
        return torch.where(neg, -scale, scale).contiguous()
    u, v = parts[".u"].to(torch.float32), parts[".v"].to(torch.float32)
    out = torch.zeros(rows, cols, dtype=torch.float32)
    # Rank order, fixed; each product is exact (bf16 x bf16 fits float32), so fused or not,
    # one rounding per element and step: the add.
    for i in range(v.shape[0]):
        out.addcmul_(u[:, i : i + 1], v[i : i + 1, :])
    return out


def _check(
    parts: Mapping[str, torch.Tensor], form: str, shape: tuple[int, ...] | list[int]
) -> tuple[str, tuple[int, ...]]:
    """(kind, shape) once ``parts`` are shown to fit ``form`` and ``shape``; ValueError if not."""
    kind, rank = parse_form(form)
    shape = tuple(int(n) for n in shape)
    if kind == "dense":
        _expect(parts[""], torch.float32, shape, "")
        return kind, shape
    if len(shape) != 2:
        raise ValueError(f"a {kind} part needs a 2-D shape, got {list(shape)}")
    rows, cols = shape
    if kind == "sign":
        _expect(parts[".sign"], torch.uint8, ((rows * cols + 7) // 8,), ".sign")
        _expect(parts[".scale"], torch.float32, (rows,), ".scale")
    else:
        _expect(parts[".u"], torch.bfloat16, (rows, rank), ".u")
        _expect(parts[".v"], torch.bfloat16, (rank, cols), ".v")
    return kind, shape


class Packed:
    """One delta kept in its stored form: the parts, checked when made, rebuilt by
    :func:`reconstruct` at every :meth:`tensor` call (the same bits each time). A rank-32
    576 x 1536 delta held this way is 135 KB instead of 3.5 MB."""

    __slots__ = ("form", "parts", "shape")

    def __init__(
        self, parts: Mapping[str, torch.Tensor], form: str, shape: tuple[int, ...] | list[int]
    ):
        self.parts = {k: v.detach().to("cpu").contiguous() for k, v in parts.items()}
        self.form = form
        self.shape = _check(self.parts, form, shape)[1]

    def tensor(self) -> torch.Tensor:
        return reconstruct(self.parts, self.form, self.shape)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts.values())


def _expect(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], suffix: str) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(
            f"part {suffix or '(dense)'} should be {str(dtype).removeprefix('torch.')} "
            f"{list(shape)}, got {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
        )


def roundtrip(t: torch.Tensor, form: str) -> torch.Tensor:
    """``reconstruct(encode(t, form))``: the delta that storing ``t`` in ``form`` applies."""
    return reconstruct(encode(t, form), form_for(t, form), tuple(t.shape))
