"""Requests, hyperparameters and deltas: validation and value-type behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from ftedit.core.deltas import Deltas, compose
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams, list_presets, load_preset
from ftedit.core.live import LiveWeights
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError, IntegrityError, RequestError
from tests.tiny import assert_params_equal, make_gpt2, make_llama, params_snapshot


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(prompt="The Eiffel Tower is in", subject="x", target_new="Rome"), "'{}'"),
        (dict(prompt="{} and {} are", subject="x", target_new="Rome"), "'{}'"),
        (dict(prompt="{} is in", subject="  ", target_new="Rome"), "subject"),
        (dict(prompt="{} is in", subject="x", target_new=""), "target_new"),
        (dict(prompt="", subject="x", target_new="Rome"), "prompt"),
        (dict(prompt="{} is in {0}", subject="x", target_new="Rome"), "braces"),
        (
            dict(prompt="{} is in", subject="x", target_new="Rome", target_true=" Rome"),
            "nothing to rewrite",
        ),
    ],
)
def test_bad_requests_name_the_field(kwargs, field):
    with pytest.raises(RequestError, match=field):
        EditRequest(**kwargs)


def test_target_gets_leading_space_and_roundtrips():
    r = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris")
    assert r.target_new == " Rome" and r.target_true == " Paris"
    assert r.text == "Eiffel Tower is located in"
    assert EditRequest.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_too_long_request_refused_and_model_unchanged():
    model, tok = make_llama()
    snap = params_snapshot(model)
    r = EditRequest("the {} is located in" + " the" * 200, "Eiffel Tower", "Rome")
    with pytest.raises(RequestError, match="limit"):
        compute_deltas(model, tok, [r], FTHyperParams())
    assert_params_equal(model, snap)


def test_from_counterfact_and_zsre_records(data_dir):
    cf = json.loads((data_dir / "counterfact-sample.json").read_text())
    zs = json.loads((data_dir / "zsre-sample.json").read_text())
    r = EditRequest.from_counterfact(cf[0])
    rw = cf[0]["requested_rewrite"]
    assert r.text == rw["prompt"].format(rw["subject"])
    assert r.target_new == " " + rw["target_new"]["str"].lstrip()
    assert r.target_true.strip() == rw["target_true"]["str"]
    built = [EditRequest.from_zsre(x) for x in zs[:50] if x["subject"] in x["src"]]
    assert len(built) > 40
    assert built[0].text == zs[0]["src"] and built[0].target_new.strip() == zs[0]["answers"][0]
    with pytest.raises(RequestError, match="CounterFact"):
        EditRequest.from_counterfact({"prompt": "x"})
    with pytest.raises(RequestError, match="does not occur"):
        EditRequest.from_zsre({"src": "What is it?", "subject": "Nope", "answers": ["a"]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=0), "lr"),
        (dict(num_steps=0), "num_steps"),
        (dict(norm_constraint=-1.0), "norm_constraint"),
        (dict(objective="mse"), "objective"),
        (dict(layers=()), "layers"),
        (dict(layers=(1, 1)), "distinct"),
        (dict(rewrite_module_tmp="model.layers.mlp"), "exactly one"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_hparams(kwargs, match):
    with pytest.raises(HParamsError, match=match):
        FTHyperParams(**kwargs)


def test_hparams_json_roundtrip_and_presets(tmp_path):
    assert {"gpt2-xl-ft-l", "gpt-j-ft-l", "smollm2-ft-l"} <= set(list_presets())
    rome = load_preset("gpt2-xl-ft-l")
    assert (rome.layers, rome.lr, rome.num_steps, rome.norm_constraint, rome.objective) == (
        (0,),
        5e-4,
        25,
        5e-4,
        "prompt_last",
    )
    assert rome.rewrite_module_tmp == "transformer.h.{}.mlp.c_proj"
    p = tmp_path / "h.json"
    p.write_text(rome.to_json())
    assert FTHyperParams.from_json(p) == rome
    with pytest.raises(HParamsError, match="unknown"):
        FTHyperParams.from_dict({"lr": 1e-3, "lrr": 1})
    with pytest.raises(HParamsError, match="no preset"):
        load_preset("nope")
    p.write_text("{not json")
    with pytest.raises(HParamsError, match="not valid JSON"):
        FTHyperParams.from_json(p)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(layers=(5,)), "out of range"),
        (dict(rewrite_module_tmp="model.blocks.{}.ffn"), "matches no"),
    ],
)
def test_hparams_that_do_not_fit_the_model(kwargs, match):
    model, tok = make_llama()
    snap = params_snapshot(model)
    with pytest.raises(HParamsError, match=match):
        compute_deltas(
            model, tok, [EditRequest("{} is in", "Paris", "Rome")], FTHyperParams(**kwargs)
        )
    assert_params_equal(model, snap)


def test_deltas_algebra():
    a = Deltas({"x": torch.ones(2, 2), "y": torch.full((3,), 2.0)})
    b = Deltas({"x": torch.full((2, 2), 3.0)})
    s = a + b
    assert torch.equal(s["x"], torch.full((2, 2), 4.0)) and torch.equal(s["y"], a["y"])
    assert (s - b) == a and (-a)["x"].sum() == -4 and (a + (-a)).max_abs() == 0
    assert a.norms()["x"] == pytest.approx(2.0)
    assert b.cosine(b) == pytest.approx(1.0) and b.cosine(-b) == pytest.approx(-1.0)
    assert Deltas({"y": torch.ones(3)}).cosine(b) == 0.0
    layered = Deltas({"m.layers.0.w": torch.ones(4), "m.layers.3.w": torch.ones(9)})
    assert layered.layer_norms() == {0: pytest.approx(2.0), 3: pytest.approx(3.0)}
    assert not Deltas({"x": torch.tensor([float("nan")])}).is_finite()
    assert a.nbytes == 7 * 4


def test_cosine_of_large_deltas_is_exact_enough():
    g = torch.Generator().manual_seed(0)
    d = Deltas(
        {"w": torch.randn(1536, 576, generator=g) * 1e-3, "b": torch.randn(576, generator=g)}
    )
    assert abs(d.cosine(d) - 1.0) < 1e-12
    assert abs(d.cosine(d + d) - 1.0) < 1e-12 and abs(d.cosine(-d) + 1.0) < 1e-12


def test_compose_is_float32_sum_in_order_then_cast():
    base = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    d1, d2 = torch.tensor([1e-3, 0.5]), torch.tensor([-1e-3, 0.25])
    out = compose(base, [d1, d2], torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (base.float() + d1 + d2).to(torch.bfloat16))
    # Accumulating in bfloat16 would lose every 1e-3 step (1 + 1e-3 rounds back to 1): only a
    # float32 sum reaches 1.1 before the cast.
    small = [torch.tensor([1e-3])] * 100
    out = compose(torch.tensor([1.0], dtype=torch.bfloat16), small, torch.bfloat16)
    assert out.item() == torch.tensor(1.1).to(torch.bfloat16).item() != 1.0
    # In the given order, in float32: 1e8 + 1 drops the 1 (float64 or reordering would not).
    big = [torch.tensor([1e8]), torch.tensor([1.0]), torch.tensor([-1e8])]
    assert compose(torch.zeros(1), big, torch.float32).item() == 0.0
    assert compose(torch.zeros(1), [big[0], big[2], big[1]], torch.float32).item() == 1.0


def test_live_weights_are_exact_and_refuse_non_finite():
    model, _ = make_gpt2()
    names = ["transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias"]
    live = LiveWeights(model)
    params = live.params
    base = {n: params[n].detach().clone() for n in names}
    snap = params_snapshot(model)
    g = torch.Generator().manual_seed(0)
    live.deltas[1] = Deltas({n: torch.randn(base[n].shape, generator=g) * 1e-3 for n in names})
    live.deltas[2] = Deltas({names[0]: torch.randn(base[names[0]].shape, generator=g) * 1e-3})
    assert live.set_active([2, 1]) == sorted(names)  # id order, whatever the order given
    stacked = compose(
        base[names[0]], [live.deltas[1][names[0]], live.deltas[2][names[0]]], torch.float32
    )
    assert torch.equal(params[names[0]].detach(), stacked)
    with live.temporarily([2]) as written:  # only #1's tensors move
        assert written == sorted(names)
        assert torch.equal(params[names[1]].detach(), base[names[1]])
    assert torch.equal(params[names[0]].detach(), stacked) and live.active == [1, 2]
    with pytest.raises(RuntimeError, match="boom"), live.temporarily([]):
        raise RuntimeError("boom")  # restored even when the body fails
    assert torch.equal(params[names[0]].detach(), stacked)
    live.set_active([])
    assert_params_equal(model, snap)  # revert-all == base, bit for bit
    live.deltas[3] = Deltas({names[0]: torch.full(base[names[0]].shape, float("inf"))})
    with pytest.raises(IntegrityError, match="non-finite"):
        live.set_active([1, 3])
    assert_params_equal(model, snap) and live.active == []


def test_live_weights_continue_kept_sums_to_the_bits_a_whole_sum_gives(monkeypatch):
    """Stacking one more edit adds only its deltas to the kept float32 sum (packed deltas are
    rebuilt only for it, and kept within the budget), and every set made live equals
    compose() over its deltas from the base, bit for bit: appended, left and restored by
    ``temporarily``, reverted in the middle, with no rebuilt value kept, and with an id's
    deltas replaced by other ones (kept sums name the deltas themselves, not their ids)."""
    from storage import codec

    model, _ = make_llama()
    model.to(torch.bfloat16)  # compose's one cast at the end, rounding every live value
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    live = LiveWeights(model)
    base = {n: live.params[n].detach().clone() for n in names}
    g = torch.Generator().manual_seed(0)

    def edit(scale: float, packed: bool) -> Deltas:
        d = {n: torch.randn(base[n].shape, generator=g) * scale for n in names}
        if not packed:
            return Deltas(d)
        return Deltas(
            {
                n: codec.Packed(codec.encode(t, "lowrank:4"), "lowrank:4", t.shape)
                for n, t in d.items()
            }
        )

    for i in range(1, 5):
        live.deltas[i] = edit(1e-3 * i, packed=i != 3)  # a dense one among packed ones
    rebuilt: list[int] = []
    real = codec.Packed.tensor
    monkeypatch.setattr(codec.Packed, "tensor", lambda p: rebuilt.append(1) or real(p))

    def check(ids):
        counted = len(rebuilt)
        for n in names:
            want = compose(base[n], [live.deltas[i][n] for i in ids], torch.bfloat16)
            assert torch.equal(live.params[n].detach(), want), (ids, n)
        del rebuilt[counted:]  # the check's own rebuilds are not the live weights'

    for top in range(1, 4):
        live.set_active(range(1, top + 1))
    check([1, 2, 3])
    rebuilt.clear()
    live.set_active([1, 2, 3, 4])  # one more on top: only #4 is rebuilt, once per tensor
    assert len(rebuilt) == len(names)
    check([1, 2, 3, 4])
    rebuilt.clear()
    with live.temporarily([]):
        check([])
    assert rebuilt == []  # back to the kept sum of all four: nothing rebuilt
    check([1, 2, 3, 4])
    live.set_active([1, 3, 4])  # #2 leaves: summed again from the base, from kept rebuilds
    assert rebuilt == []
    check([1, 3, 4])
    live.rebuilt.clear()
    live.rebuilt_bytes, live.rebuilt_budget = 0, 0  # none kept: each packed one rebuilt
    live.set_active([1, 2, 4])
    assert len(rebuilt) == 3 * len(names)
    check([1, 2, 4])
    live.deltas[3] = edit(5e-3, packed=True)  # same id, other deltas: no kept sum is used
    live.set_active([1, 2, 3])
    check([1, 2, 3])
    live.set_active([])
    for n in names:
        assert torch.equal(live.params[n].detach(), base[n])


def test_live_weights_revert_an_edit_from_the_partial_sum_below_it(monkeypatch):
    """Partial sums are kept at every mark_every-th edit: reverting edit 5 of 6 sums again
    from the mark at 4 (only #6 rebuilt), to compose()'s bits; past marks_budget the marks
    thin out to every other one and stay within it."""
    from storage import codec

    model, _ = make_llama()
    model.to(torch.bfloat16)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    live = LiveWeights(model)
    live.mark_every, live.rebuilt_budget = 2, 0  # every packed delta rebuilt when summed
    base = {n: live.params[n].detach().clone() for n in names}
    g = torch.Generator().manual_seed(1)
    for i in range(1, 9):
        t = {n: torch.randn(base[n].shape, generator=g) * 1e-3 for n in names}
        packed = {
            n: codec.Packed(codec.encode(v, "lowrank:4"), "lowrank:4", v.shape)
            for n, v in t.items()
        }
        live.deltas[i] = Deltas(packed)
    rebuilt: list[int] = []
    real = codec.Packed.tensor
    monkeypatch.setattr(codec.Packed, "tensor", lambda p: rebuilt.append(1) or real(p))

    def check(ids):
        with monkeypatch.context() as m:
            m.setattr(codec.Packed, "tensor", real)
            for n in names:
                want = compose(base[n], [live.deltas[i][n] for i in ids], torch.bfloat16)
                assert torch.equal(live.params[n].detach(), want), (ids, n)

    live.set_active(range(1, 7))
    assert sorted(live.marks[names[0]]) == [2, 4, 6]
    rebuilt.clear()
    live.set_active([1, 2, 3, 4, 6])  # #5 leaves: from the mark at 4, #6 alone added
    assert len(rebuilt) == len(names)
    check([1, 2, 3, 4, 6])
    rebuilt.clear()
    live.set_active([2, 3, 4, 5, 6])  # #1 leaves: no mark below it, all five again
    assert len(rebuilt) == 5 * len(names)
    check([2, 3, 4, 5, 6])
    one = live.marks[names[0]][2][0][1].nbytes  # at 2 and 4 now: the two sets' marks
    live.marks_budget = 7 * one  # room for seven of the two tensors' eleven
    live.set_active(range(1, 9))
    assert live.mark_every == 4 and live.marks_bytes <= live.marks_budget
    assert all(sorted(m) == [4, 8] for m in live.marks.values())
    check(range(1, 9))
    live.set_active([1, 2, 3, 4, 5, 6, 8])
    check([1, 2, 3, 4, 5, 6, 8])
    # two temporary sets (a diff, an evaluation) leave the live set's own marks in place
    live.set_active([])
    live, deltas = LiveWeights(model), live.deltas  # no sums or marks kept
    live.deltas, live.mark_every, live.rebuilt_budget = deltas, 2, 0
    live.set_active(range(1, 9))
    for gone in (3, 5):
        with live.temporarily([i for i in range(1, 9) if i != gone]):
            pass
    rebuilt.clear()
    live.set_active([1, 2, 3, 4, 5, 6, 8])  # from the live set's mark at 6: #8 alone
    assert len(rebuilt) == len(names)
    check([1, 2, 3, 4, 5, 6, 8])
