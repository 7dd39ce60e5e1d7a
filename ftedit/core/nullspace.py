"""Null-space projection of an edit's update (AlphaEdit, arXiv 2410.02355), for FT.

An edited matrix W maps its input k to W k; an update D changes the output on k by D k. Over
generic text the inputs k of W span some directions often and others rarely. With the second
moment C = E[k k^T] = U diag(e) U^T, projecting every optimiser step's change of W on its input
side by P = U diag(1 / (1 + s * e / mean(e))) U^T leaves the outputs on frequent inputs almost
unchanged (D P k ~ 0 where e is large) and lets the edit use the rare directions. ``s``
(``hparams.nullspace``) is the strength: 0 is off, large values approach AlphaEdit's hard
projector onto the exact null space of C. The soft form is needed because a small model's keys
leave little exact null space.

The statistics are computed once per base model, edited layers and template, from
``data/nullspace_prompts.txt`` (dev-split CounterFact prompts only) and texts the model writes
itself, with a progress bar, and cached as a safetensors file under the model cache dir
(``paths.cache_dir() / "nullspace"``), keyed by a hash of every weight the inputs depend on
(except the template's own matrices, which edits change: a stack of edits on a base keeps using
that base's statistics). A file whose stored key differs is recomputed, never used. Writes are
atomic (tmp + fsync + os.replace).

The projection runs as optimiser step hooks (``Projector.attach``): a pre-hook projects the
gradient (so Adam's per-element rescaling works inside the subspace) and snapshots the trained
tensors, and a post-hook projects what the step changed, so it acts on whatever tensors the
optimiser steps, right after the step and before ``ft._train``'s clamp; no extra forward or
backward pass. Biases would shift every output alike, so their change is dropped.

``hparams.subject_keys_only`` (with ``keep_nullspace``) goes the other way as well: each step
keeps only its part on the edited subject's own last-token inputs (``subject_basis``, a handful
of keys, made orthogonal to the keep basis), ROME's localisation inside FT: a prompt whose
inputs are orthogonal to those keys keeps its outputs, whatever its template
(bench/results/dev-tuning.md, fifth round).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ftedit import paths
from ftedit.core.edit_keys import (
    join_bases,
    keep_bases,
    subject_basis,
    subject_keys,
    subject_room,
)
from ftedit.core.hparams import FTHyperParams
from ftedit.core.key_reads import each_key, edited_modules, in_dim
from ftedit.core.models import blocks_of
from ftedit.core.precision import rows_into_box
from ftedit.errors import HParamsError

PROMPTS_FILE = Path(__file__).parent / "data" / "nullspace_prompts.txt"
SAMPLE_SEEDS = ("The", "In", "A", "It", "He", "She", "This", "When")
# Texts the model writes itself (per seed, tokens each): generic text beyond the prompt file.
SAMPLES_PER_SEED, SAMPLE_TOKENS = 16, 40
VERSION = 1  # bump when the corpus or the statistic changes: old files then stop matching


@functools.cache
def _prompts() -> tuple[str, ...]:
    lines = PROMPTS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(x for x in lines if x.strip() and not x.startswith("#"))


def base_key(model, hp: FTHyperParams) -> str:
    """What the statistics depend on: the weights up to the top edited block (all but the
    template's matrices), the model's config and name, the layers, template and corpus."""
    return _base_key(model, hp.rewrite_module_tmp, tuple(sorted(hp.layers)))


_KEY_MEMO: dict = {}


def _base_key(model, template: str, layers: tuple[int, ...]) -> str:
    blocks = blocks_of(model, template)
    if blocks is None:
        raise HParamsError(f"nullspace: {template!r} does not index a list of blocks")
    edited = re.compile(r"(^|\.)" + re.escape(template).replace(r"\{\}", r"\d+") + r"(\.|$)")
    below = {id(p) for i in range(max(layers) + 1) for p in blocks[i].parameters()}
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    named = [
        (n, p)
        for n, p in model.named_parameters()
        if not edited.search(n) and (id(p) in below or id(p) not in in_blocks)
    ]
    memo = (id(model), template, layers, tuple((p.data_ptr(), p._version) for _, p in named))
    if memo in _KEY_MEMO:
        return _KEY_MEMO[memo]
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps([VERSION, template, list(layers), _prompts()]).encode())
    h.update((cfg.to_json_string() if cfg is not None else type(model).__name__).encode())
    for n, p in named:
        t = p.detach().cpu().contiguous()
        h.update(f"{n}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    _KEY_MEMO.clear()
    _KEY_MEMO[memo] = h.hexdigest()
    return _KEY_MEMO[memo]


def cache_path(key: str, hp: FTHyperParams) -> Path:
    layers = "-".join(str(i) for i in sorted(hp.layers))
    return paths.cache_dir() / "nullspace" / f"{key[:24]}-L{layers}.safetensors"


@torch.no_grad()
def _texts(model, tok) -> list[str]:
    """The prompt file plus SAMPLE_SEEDS x SAMPLES_PER_SEED texts the model samples itself."""
    dev = model.get_input_embeddings().weight.device
    out = list(_prompts())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        for seed in tqdm(SAMPLE_SEEDS, desc="nullspace: sampling", leave=False):
            ids = tok(seed, return_tensors="pt", add_special_tokens=False)["input_ids"].to(dev)
            gen = model.generate(
                input_ids=ids.repeat(SAMPLES_PER_SEED, 1),
                attention_mask=torch.ones_like(ids).repeat(SAMPLES_PER_SEED, 1),
                do_sample=True,
                top_k=20,
                max_new_tokens=SAMPLE_TOKENS,
                pad_token_id=pad,
            )
            out += [" ".join(t.split()) for t in tok.batch_decode(gen, skip_special_tokens=True)]
    return [t for t in out if t.strip()]


def second_moments(model, tok, hp: FTHyperParams, texts: list[str]) -> dict[int, torch.Tensor]:
    """C[layer] = mean over every non-pad token of k k^T, k the edited module's input (float64)."""
    mods = edited_modules(model, hp)
    sums = {i: torch.zeros(in_dim(m), in_dim(m), dtype=torch.float64) for i, m in mods.items()}

    def add(layer, k):  # float32 product per batch, float64 sum
        sums[layer].add_((k.T @ k).double().cpu())

    count = each_key(model, tok, hp, texts, add, "nullspace: statistics")
    return {i: s / max(count, 1) for i, s in sums.items()}


def _save(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Atomic: a reader sees the old file or the whole new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), {"key": key})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The file's tensors if it was made for ``key``; None if absent, unreadable or another's."""
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - missing, torn or foreign file: recompute, never fail
        return None


def eigen_stats(model, tok, hp: FTHyperParams) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """(eigenvalues, eigenvectors) of each edited layer's input second moment, from the cache
    when it holds this base's, else computed (with a progress bar) and cached."""
    key = base_key(model, hp)
    path = cache_path(key, hp)
    got = _load(path, key)
    if got is None or any(f"e{i}" not in got for i in hp.layers):
        print(f"ftedit: computing null-space statistics once for this model -> {path}")
        C = second_moments(model, tok, hp, _texts(model, tok))
        got = {}
        for i, c in C.items():
            e, u = torch.linalg.eigh(c)
            got[f"e{i}"], got[f"u{i}"] = e.clamp(min=0), u.float()
        _save(path, key, got)
    return {i: (got[f"e{i}"].double(), got[f"u{i}"]) for i in hp.layers}


# keep_prior_exact projects onto the complement of the keep basis, not off the basis, once
# the basis holds more than this share of the input width: one QR per edit, then each of the
# alternations multiplies by the thinner of the two (bench/speed_stack.py times both).
COMPLEMENT_ABOVE = 0.5


def soft_projector(e: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """U diag(1 / (1 + s e / mean(e))) U^T: symmetric, ~1 on rare input directions, ~0 on
    frequent ones (s = strength)."""
    scale = 1.0 / (1.0 + strength * e / e.mean().clamp(min=1e-30))
    return (u * scale.to(u.dtype)) @ u.T


class Projector:
    """Per trained tensor, the matrix that projects an optimiser step's change on the input side."""

    def __init__(
        self,
        mats: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, bool]],
        onto: dict[str, torch.Tensor] | None = None,
        final: dict[str, torch.Tensor] | None = None,
        widen: dict[str, float] | None = None,
    ):
        # name -> (soft projector P [in, in] or None, keep basis Q [in, r] or None,
        #          True if the weight is stored [in, out] like GPT-2's Conv1D)
        self.mats = mats
        # name -> orthonormal S [in, r] orthogonal to Q: the step is kept only on span(S)
        # (hparams.subject_keys_only)
        self.onto = onto or {}
        # name -> orthonormal basis [in, r] the finished change is taken off once more
        # (hparams.keep_prior_exact: the whole keep basis Q of an edit stacked on earlier ones)
        self.final = final or {}
        # name -> factor its box is widened by (hparams.keep_prior_box; absent: 1)
        self.widen = widen or {}
        self._before: list[torch.Tensor] = []

    def attach(self, opt: torch.optim.Optimizer, names: list[str]) -> None:
        """Project every step of ``opt``, whose parameters are the tensors ``names`` (in order)."""
        params = [p for g in opt.param_groups for p in g["params"]]
        if len(params) != len(names):
            raise ValueError(f"nullspace: {len(params)} optimised tensors for {len(names)} names")

        @torch.no_grad()
        def pre(opt, args, kwargs):
            # Adam's step is the gradient rescaled element by element: projecting only the step
            # would leave it tiny where the gradient points at frequent inputs, so the gradient
            # is projected first (Adam then restores the step's size) and the step after.
            for name, p in zip(names, params, strict=True):
                if p.grad is not None:
                    self.project_(name, p.grad, torch.zeros_like(p.grad))
            self._before = [p.detach().clone() for p in params]

        @torch.no_grad()
        def post(opt, args, kwargs):
            for name, p, old in zip(names, params, self._before, strict=True):
                self.project_(name, p, old)
            self._before = []

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(post)

    @torch.no_grad()
    def project_(self, name: str, p: torch.Tensor, old: torch.Tensor) -> None:
        """p <- old + (p - old) projected; a tensor without a matrix (a bias) keeps ``old``."""
        p.copy_(old + self._projected(name, (p - old).float()).to(p.dtype))

    def _projected(self, name: str, d: torch.Tensor) -> torch.Tensor:
        """The change ``d`` projected on its input side (zero for a tensor without a matrix)."""
        if name not in self.mats:
            return torch.zeros_like(d)
        P, Q, transposed = self.mats[name]
        S = self.onto.get(name)
        if S is not None:  # S is orthogonal to Q: projecting onto S also takes d off Q, and Q
            Q = None  # is the wide one (every keep token): 6x the time of the S step
        if transposed:  # Conv1D: [in, out], the input side is the left one
            d = P @ d if P is not None else d
            d = d - Q @ (Q.T @ d) if Q is not None else d
            d = S @ (S.T @ d) if S is not None else d
        else:
            d = d @ P if P is not None else d
            d = d - (d @ Q) @ Q.T if Q is not None else d
            d = (d @ S) @ S.T if S is not None else d
        return d

    @torch.no_grad()
    def off_final_(self, name: str, p: torch.Tensor, old: torch.Tensor, eps, n: int) -> None:
        """p <- old + (p - old) off the ``final`` basis: ``n`` alternations of the box
        |p - old| <= ``eps`` (None: no box) and that projection (both convex: it nears their
        intersection, so little is left to cut), then the projection and each output row
        scaled into the box (a scaled row stays off the basis)."""
        E = self.final.get(name)
        if E is None or not E.shape[1]:
            return
        conv = self.mats[name][2]  # Conv1D: [in, out], the input side is the left one
        if E.shape[1] > COMPLEMENT_ABOVE * E.shape[0]:  # most inputs kept (a long stack):
            C = torch.linalg.qr(E, mode="complete").Q[:, E.shape[1] :]  # onto the thinner rest
            E = None

        def off(d: torch.Tensor) -> torch.Tensor:
            if E is None:
                return C @ (C.T @ d) if conv else (d @ C) @ C.T
            return d - E @ (E.T @ d) if conv else d - (d @ E) @ E.T

        d = (p - old).float()
        for _ in range(n if eps is not None else 0):
            d = off(d.clamp_(min=-eps, max=eps))
        d = off(d)
        if eps is not None:
            d = rows_into_box(d, eps, 0 if conv else 1)
        p.copy_(old + d.to(p.dtype))

    @torch.no_grad()
    def alternate_(
        self,
        name: str,
        p: torch.Tensor,
        old: torch.Tensor,
        lo_d: torch.Tensor,
        hi_d: torch.Tensor,
        n: int,
    ) -> None:
        """``n`` times: clamp p - old to [lo_d, hi_d] (the box around ``old``, as bounds on the
        change: computed once per edit), then project it (hparams.box_iters). With the subject
        span alone the change stays in place between the two: two thin products each."""
        d = p - old
        S = self.onto.get(name)
        inplace = S is not None and name in self.mats and self.mats[name][0] is None
        inplace = inplace and d.dtype == S.dtype
        for _ in range(n):
            d.clamp_(min=lo_d, max=hi_d)
            if not inplace:
                d = self._projected(name, d.float()).to(p.dtype)
            elif self.mats[name][2]:  # Conv1D: [in, out]
                torch.mm(S, S.T @ d, out=d)
            else:
                torch.mm(d @ S, S.T, out=d)
        torch.add(old, d, out=p)


def projector(model, tok, hp: FTHyperParams, names: list[str], requests=(), prior=()) -> Projector:
    """The projector for the tensors ``names`` (ft.weights_to_edit's): the soft one of the
    generic statistics at ``hp.nullspace`` (if > 0), then the exact one of the keep prompts'
    inputs for ``requests`` (if ``hp.keep_nullspace``; with ``prior``, the earlier edits the
    model carries, for keep_prior_edits)."""
    stats = eigen_stats(model, tok, hp) if hp.nullspace else None
    basis, earlier, soft = None, {}, {}
    if hp.keep_nullspace:
        own, earlier, soft = keep_bases(model, tok, hp, requests, prior)
        basis = join_bases(own, earlier)
    onto, room = None, {}
    if hp.subject_keys_only:
        keys = subject_keys(model, tok, hp, requests)
        onto = subject_basis(model, tok, hp, requests, basis, keys, soft)
        if earlier and hp.keep_prior_box:
            room = subject_room(keys, own, earlier)
    params = dict(model.named_parameters())
    mats, ontos, finals, widen = {}, {}, {}, {}
    for layer, mod in edited_modules(model, hp).items():
        wname = next((n for n in names if params.get(n) is mod.weight), None)
        if wname is not None:
            dev = mod.weight.device
            P = soft_projector(*stats[layer], hp.nullspace).to(dev) if stats else None
            Q = basis[layer].to(dev) if basis else None
            mats[wname] = (P, Q, hasattr(mod, "nf"))
            if onto:
                ontos[wname] = onto[layer].to(dev)
            if earlier and hp.keep_prior_exact:  # the earlier keys' parts in Q's span too
                finals[wname] = Q
            if layer in room:  # the same change of output needs 1 / room the weights
                widen[wname] = min(hp.keep_prior_box, 1 / max(room[layer], 1e-30))
    return Projector(mats, ontos, finals, widen)
