"""compute_deltas: purity, the clamp, ROME's loss, padding, determinism (tiny models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ftedit.core.ft import batch_loss, compute_deltas, encode, target_logprobs, weights_to_edit
from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from tests.tiny import assert_params_equal, make_gpt2, make_llama, params_snapshot

TEMPLATES = {"llama": "model.layers.{}.mlp.down_proj", "gpt2": "transformer.h.{}.mlp.c_proj"}
MAKERS = {"llama": make_llama, "gpt2": make_gpt2}
REQ = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")


def hp(arch: str, **kw) -> FTHyperParams:
    base = dict(layers=(0, 1), rewrite_module_tmp=TEMPLATES[arch], lr=1e-2, num_steps=8)
    return FTHyperParams(**{**base, **kw})


@pytest.fixture(params=["llama", "gpt2"])
def arch(request):
    return request.param


def test_pure_and_returns_deltas(arch):
    model, tok = MAKERS[arch]()
    snap = params_snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    res = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=None))
    assert_params_equal(model, snap)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert set(res.deltas) == set(weights_to_edit(model, hp(arch)))
    assert res.deltas.max_abs() > 0 and res.steps == len(res.losses) > 0
    assert res.losses[-1] < res.losses[0]
    if arch == "gpt2":  # Conv1D is stored transposed (in, out); bias matched by the template too
        assert res.deltas["transformer.h.0.mlp.c_proj.weight"].shape == (128, 32)
        assert "transformer.h.0.mlp.c_proj.bias" in res.deltas


def test_pure_when_interrupted_mid_loop(arch):
    model, tok = MAKERS[arch]()
    snap = params_snapshot(model)

    def boom(step, n, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_deltas(model, tok, [REQ], hp(arch), callback=boom)
    assert_params_equal(model, snap)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("eps", [1e-4, 3e-3])
def test_clamp_holds(arch, eps):
    model, tok = MAKERS[arch]()
    res = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=eps))
    for name, d in res.deltas.items():
        # One float32 ulp of slack: clamp bounds are rounded in the weight's own precision.
        w = dict(model.named_parameters())[name].detach()
        slack = torch.finfo(torch.float32).eps * (w.abs() + eps)
        assert bool((d.abs() <= eps + slack).all()), name
    assert res.deltas.max_abs() > eps * 0.5  # the box is actually reached


def test_unconstrained_exceeds_box(arch):
    model, tok = MAKERS[arch]()
    res = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=None, lr=5e-2))
    assert res.deltas.max_abs() > 1e-2


def _seed_loss(model, tok, texts, targets):
    """The seed walk-through's formula, transcribed: right-padded prompts, logits at the last
    prompt token, every target token gathered from that one distribution."""
    inputs = tok(texts, return_tensors="pt", padding=True)
    target_ids = tok(targets, return_tensors="pt", padding=True, add_special_tokens=False)
    last = inputs["attention_mask"].sum(dim=1) - 1
    bs = inputs["input_ids"].shape[0]
    probs = F.log_softmax(model(**inputs).logits[torch.arange(bs), last], dim=-1)
    mask = target_ids["attention_mask"]
    loss = -(torch.gather(probs, 1, target_ids["input_ids"]) * mask).sum(1) / mask.sum(1)
    return loss.mean()


@torch.no_grad()
def test_prompt_last_equals_seed_formula(arch):
    model, tok = MAKERS[arch]()
    texts = ["the Eiffel Tower is located in", "Danielle Darrieux speaks"]
    targets = [" Rome", " English French"]
    ours = batch_loss(model, encode(tok, texts, targets, "prompt_last"))
    assert torch.allclose(ours, _seed_loss(model, tok, texts, targets), atol=1e-6)
    res = compute_deltas(
        model,
        tok,
        [EditRequest("the {} is located in", "Eiffel Tower", "Rome")],
        hp(arch, num_steps=1),
    )
    assert res.losses[0] == pytest.approx(
        float(_seed_loss(model, tok, texts[:1], targets[:1])), abs=1e-5
    )


@pytest.mark.parametrize("objective", ["prompt_last", "target_new"])
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padding_invariance(arch, objective, side):
    model, tok = MAKERS[arch]()
    alone = encode(tok, ["the Eiffel Tower is located in"], [" Rome Italy"], objective)
    mixed = encode(
        tok,
        ["Paris", "the Eiffel Tower is located in", "the official language of France is French"],
        [" France", " Rome Italy", " the"],
        objective,
        padding_side=side,
    )
    a = target_logprobs(model, alone)[0]
    b = target_logprobs(model, mixed)[1][: a.shape[0]]
    assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_same_seed_same_deltas(arch):
    model, tok = MAKERS[arch]()
    h = hp(arch, num_prefixes=2, prefix_len=3, seed=7)
    a = compute_deltas(model, tok, [REQ], h).deltas
    b = compute_deltas(model, tok, [REQ], h).deltas
    assert a == b


def test_target_new_objective_trains(arch):
    model, tok = MAKERS[arch]()
    r = EditRequest("the {} is located in", "Eiffel Tower", "Rome Italy")
    res = compute_deltas(model, tok, [r], hp(arch, objective="target_new", norm_constraint=None))
    assert res.losses[-1] < res.losses[0]


def test_batches_of_several_requests(arch):
    model, tok = MAKERS[arch]()
    reqs = [REQ, EditRequest("{} speaks", "Danielle Darrieux", "English", "French")]
    res = compute_deltas(model, tok, reqs, hp(arch, batch_size=1, norm_constraint=None))
    assert res.losses[-1] < res.losses[0]


def test_early_stop():
    model, tok = make_llama()
    # The tiny model's logits are bounded (0.02 init behind a final RMSNorm): its loss floor
    # is ~3.9, so the stop threshold sits above it.
    res = compute_deltas(
        model,
        tok,
        [REQ],
        hp("llama", lr=1e-2, num_steps=200, norm_constraint=None, early_stop_loss=4.0),
    )
    assert res.stopped_early and res.losses[-1] < 4.0 < res.losses[-2] and res.steps < 200
