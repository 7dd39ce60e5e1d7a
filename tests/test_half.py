"""bfloat16 / float16 edits (tiny models): float32 masters, an exact box, purity, the invariant,
and a store opened in another dtype."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from ftedit.core.deltas import compose
from ftedit.core.ft import compute_deltas, weights_to_edit
from ftedit.core.hparams import FTHyperParams
from ftedit.core.models import LoadedModel
from ftedit.core.requests import EditRequest
from ftedit.versioning.workspace import Workspace
from tests.storekit import FP, HP0, HP01, HP1, REQUESTS, assert_same, params
from tests.tiny import assert_params_equal, make_gpt2, make_llama, params_snapshot

TEMPLATES = {"llama": "model.layers.{}.mlp.down_proj", "gpt2": "transformer.h.{}.mlp.c_proj"}
MAKERS = {"llama": make_llama, "gpt2": make_gpt2}
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
REQ = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")


def hp(arch: str, **kw) -> FTHyperParams:
    base = dict(layers=(0, 1), rewrite_module_tmp=TEMPLATES[arch], lr=5e-2, num_steps=20)
    return FTHyperParams(**{**base, **kw})


def tiny(arch: str, dtype: str):
    model, tok = MAKERS[arch]()
    return model.to(HALF[dtype]), tok


@pytest.fixture(params=["llama", "gpt2"])
def arch(request):
    return request.param


@pytest.fixture(params=sorted(HALF))
def dtype(request):
    return request.param


def _next_token(model, tok, text: str) -> tuple[str, float]:
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1].float()
    p = logits.softmax(-1)[tok.convert_tokens_to_ids("Rome")].item()
    return tok.convert_ids_to_tokens(int(logits.argmax())), p


def test_half_edit_takes_inside_an_exact_box(arch, dtype):
    model, tok = tiny(arch, dtype)
    eps = 0.1  # binds (the unconstrained edit moves weights by ~0.7) yet lets the fact flip
    top0, p0 = _next_token(model, tok, REQ.text)
    res = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=eps))
    assert top0 != "Rome" and res.losses[-1] < res.losses[0]
    e32 = torch.tensor(eps, dtype=torch.float32)
    for name, d in res.deltas.items():
        assert d.dtype == torch.float32
        assert bool((d.abs() <= e32).all()), f"{name}: {d.abs().max().item()} > {eps}"
    assert res.deltas.max_abs() > 0.9 * eps  # the box is reached
    ps = dict(model.named_parameters())
    with torch.no_grad():  # the live value the store would set: cast(base + d in float32)
        for k, d in res.deltas.items():
            ps[k].copy_(compose(ps[k].detach(), [d], ps[k].dtype))
    top1, p1 = _next_token(model, tok, REQ.text)
    assert top1 == "Rome" and p1 > p0


def test_half_small_box_moves_below_one_half_step(dtype):
    """A box smaller than the weights' own rounding step: trained in the weight's dtype, no
    update would survive; the float32 master moves, and stays inside the box."""
    model, tok = tiny("llama", dtype)
    eps = 1e-4
    res = compute_deltas(model, tok, [REQ], hp("llama", layers=(1,), norm_constraint=eps))
    e32 = torch.tensor(eps, dtype=torch.float32)
    assert all(bool((d.abs() <= e32).all()) for d in res.deltas.values())
    assert res.deltas.max_abs() > 0.9 * eps and all(
        torch.isfinite(d).all() for d in res.deltas.values()
    )


def test_half_pure_also_when_the_callback_raises(arch, dtype):
    model, tok = tiny(arch, dtype)
    snap = params_snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=1e-2, num_steps=3))
    assert_params_equal(model, snap)
    assert all(p.grad is None for p in model.parameters())

    def boom(step, n, loss):
        if step == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=1e-2), callback=boom)
    assert_params_equal(model, snap)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.dtype == HALF[dtype] for p in model.parameters())


def test_float32_weights_are_their_own_masters():
    """float32 keeps FT's computation: training the same edit twice gives the same bits, and
    the deltas equal the weights' own movement (no second copy is trained)."""
    model, tok = make_llama()
    h = hp("llama", norm_constraint=3e-3, num_steps=4)
    a, b = compute_deltas(model, tok, [REQ], h), compute_deltas(model, tok, [REQ], h)
    assert a.deltas == b.deltas
    seen = {}

    def grab(step, n, loss):  # mid-training the model holds base + the trained delta so far
        if step == 4:
            seen.update({k: v.detach().clone() for k, v in weights_to_edit(model, h).items()})

    base = {k: v.detach().clone() for k, v in weights_to_edit(model, h).items()}
    res = compute_deltas(model, tok, [REQ], h, callback=grab)
    assert all(torch.equal(seen[k] - base[k], res.deltas[k]) for k in res.deltas)


# ---- through the Workspace: the invariant in a half dtype ------------------------------------
def half_ws(dtype: str, home=None, seed: int = 0) -> Workspace:
    model, tok = make_llama(seed)
    fp = dataclasses.replace(FP, dtype=dtype)
    return Workspace(home=home, loaded=LoadedModel(model.to(HALF[dtype]), tok, fp, 0.0))


def test_half_replay_equals_live_and_revert_all_gives_base(dtype):
    ws = half_ws(dtype)
    base = params(ws)
    for r, h in zip(REQUESTS, (HP0, HP1, HP01), strict=False):
        ws.edit(r, h.replace(norm_constraint=5e-3))
    assert all(p.dtype == HALF[dtype] for p in ws.model.parameters())
    assert_same(params(ws), params(half_ws(dtype, ws.home)))  # a fresh process replays it
    assert ws.verify().ok
    for edit_id in (2, 1, 3):
        ws.revert(edit_id)
    assert_same(params(ws), base)


def test_store_opened_in_another_dtype_says_so(dtype):
    ws = half_ws(dtype)
    ws.edit(REQUESTS[0], HP0)
    ws.edit(REQUESTS[1], HP0)
    assert ws.dtype_notice is None
    other = Workspace(home=ws.home, loaded=LoadedModel(*make_llama(), FP, 0.0))  # float32
    assert other.history() == []
    assert other.dtype_notice == (
        f"this store has 2 edits made in {dtype} on tiny-llama; you opened it in float32, so "
        f"they are not shown: pass --dtype {dtype} (FTEDIT_DTYPE={dtype} for the app)"
    )


def test_cli_prints_the_dtype_notice(monkeypatch):
    from ftedit import cli

    ws = half_ws("bfloat16")
    ws.edit(REQUESTS[0], HP0)
    opened = {}

    def fake_workspace(model, home, dtype=None):  # the tiny model in the dtype asked for
        m, tok = make_llama()
        fp = dataclasses.replace(FP, dtype=dtype or "float32")
        opened["dtype"] = dtype
        return Workspace(home=home, loaded=LoadedModel(m.to(getattr(torch, fp.dtype)), tok, fp, 0))

    monkeypatch.setattr("ftedit.versioning.workspace.Workspace", fake_workspace)
    run = CliRunner().invoke(cli.cli, ["--home", str(ws.home), "verify"])
    assert run.exit_code == 0, run.output
    assert "warning: this store has 1 edit made in bfloat16" in run.stderr
    assert "pass --dtype bfloat16" in run.stderr and "0 edits" in run.stdout
    run = CliRunner().invoke(cli.cli, ["--home", str(ws.home), "verify", "--dtype", "bfloat16"])
    assert run.exit_code == 0 and opened["dtype"] == "bfloat16", run.output
    assert "warning" not in run.stderr and "1 edits" in run.stdout


@pytest.mark.parametrize("eps", [1e-4, 5e-3, 0.1, 1.0])
def test_box_bounds_are_exact_in_float32(eps):
    from ftedit.core.precision import box_bounds

    torch.manual_seed(0)
    w = torch.cat([torch.randn(20000) * s for s in (1e-4, 1e-2, 1.0, 30.0)])
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        base = w.to(dtype).float()
        lo, hi = box_bounds(base, eps, exact=True)
        e32 = torch.tensor(eps, dtype=torch.float32)
        assert bool(((hi - base) <= e32).all() and ((base - lo) <= e32).all())
        # only pulled in where needed: one step further out would pass eps (or equal it)
        assert bool(((torch.nextafter(hi, hi + 1) - base) >= e32).all())


def test_app_dtype_from_flag_then_env(monkeypatch):
    from ui import state

    for name in ("_workspace", "_model_spec", "_dtype"):  # restored after the test
        monkeypatch.setattr(state, name, getattr(state, name))
    monkeypatch.setenv("FTEDIT_DTYPE", "float16")
    state.configure(None, "bfloat16")
    assert state._dtype == "bfloat16"
    state.configure(None)
    assert state._dtype == "float16"
    monkeypatch.delenv("FTEDIT_DTYPE")
    state.configure(None)
    assert state._dtype is None
