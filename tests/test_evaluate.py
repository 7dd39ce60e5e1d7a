"""The evaluation harness on tiny models: exact restore, score shapes, ROME's n-gram entropy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ftedit.core import evaluate as ev
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from tests.tiny import assert_params_equal, make_llama, params_snapshot

CF = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "the {} is located in",
        "subject": "Eiffel Tower",
        "target_new": {"str": "Rome"},
        "target_true": {"str": "Paris"},
    },
    "paraphrase_prompts": ["the Eiffel Tower is in", "Eiffel Tower is located in"],
    "neighborhood_prompts": ["the Tokyo Tower is located in"],
    "generation_prompts": ["the Eiffel Tower is", "Eiffel Tower"],
}
ZSRE = {
    "subject": "Eiffel Tower",
    "src": "which city is Eiffel Tower located in ?",
    "rephrase": "what city is the Eiffel Tower in ?",
    "answers": ["Paris"],
    "loc": "nq question: who made Apple",
    "loc_ans": "Apple",
}
HP = FTHyperParams(layers=(0, 1), lr=5e-2, num_steps=5, norm_constraint=None)


def test_ngram_entropy_matches_rome_formula():
    # bigrams (a b) x2, (b a) x1; trigrams (a b a), (b a b): ROME weights 2/3 and 4/3, mean.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ev.ngram_entropy("a b a b") == pytest.approx((h2 * 2 / 3 + 1.0 * 4 / 3) / 2)
    assert ev.ngram_entropy("a") == 0.0


def test_applied_restores_exact_bits():
    model, tok = make_llama()
    snap = params_snapshot(model)
    res = compute_deltas(model, tok, [EditRequest.from_counterfact(CF)], HP)
    with ev.applied(model, res.deltas):
        name = next(iter(res.deltas))
        assert not torch.equal(dict(model.named_parameters())[name].detach(), snap[name])
    assert_params_equal(model, snap)


def test_evaluate_counterfact_rows_and_purity():
    model, tok = make_llama()
    snap = params_snapshot(model)
    seen = []
    rows = ev.evaluate(
        model, tok, [CF], HP, progress=lambda i, n, r: seen.append(i), gen_prompts=2, gen_tokens=4
    )
    assert_params_equal(model, snap)
    assert seen == [1] and rows[0]["case_id"] == 7 and rows[0]["steps"] == 5
    # The scores are those of the edited model (deltas recomputed here: compute_deltas is
    # deterministic), not of the base model.
    res = compute_deltas(model, tok, [EditRequest.from_counterfact(CF)], HP)
    with ev.applied(model, res.deltas):
        edited = ev.score_counterfact(model, tok, CF, gen_tokens=0)
    scores = ("efficacy", "paraphrase", "neighborhood", "efficacy_magnitude")
    assert {k: rows[0][k] for k in scores} == {k: edited[k] for k in scores}
    assert rows[0]["gen_entropy"] > 0.0
    base = ev.evaluate(model, tok, [CF], None, gen_tokens=0)[0]
    assert base["seconds"] == 0.0 and math.isnan(base["gen_entropy"])
    assert base["efficacy_magnitude"] != rows[0]["efficacy_magnitude"]
    s = ev.summarize(rows)
    assert s["n"] == 1 and s["efficacy"] == 100 * rows[0]["efficacy"]


@torch.no_grad()
def test_token_accuracy_is_teacher_forced_argmax():
    model, tok = make_llama()
    prompt, target = "the Eiffel Tower is", " located in Rome"
    p_ids = tok(prompt)["input_ids"]
    t_ids = tok(target, add_special_tokens=False)["input_ids"]
    logits = model(torch.tensor([p_ids + t_ids])).logits[0]
    pred = logits[len(p_ids) - 1 : len(p_ids) + len(t_ids) - 1].argmax(-1)
    want = (pred == torch.tensor(t_ids)).float().mean().item()
    assert ev.token_accuracy(model, tok, [prompt, "x"], [target, " y"])[0] == pytest.approx(want)


def test_zsre_scores_and_reports(tmp_path):
    model, tok = make_llama()
    rows = ev.evaluate(model, tok, [ZSRE], HP, dataset="zsre")
    assert set(ev.ZSRE_METRICS) <= set(rows[0])
    sums = {
        "unedited": ev.summarize(
            ev.evaluate(model, tok, [ZSRE], None, dataset="zsre"), ev.ZSRE_METRICS
        ),
        "ft": ev.summarize(rows, ev.ZSRE_METRICS),
    }
    table = ev.markdown_table(sums, ev.ZSRE_METRICS)
    assert table.count("\n") == 4 and "| ft | 1 |" in table
    png = ev.save_chart(sums, tmp_path / "c.png", "tiny")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_splits(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([{"case_id": i} for i in range(500)]))
    assert [r["case_id"] for r in ev.load_records(path, "test", 2)] == [250, 251]
    assert len(ev.load_records(path, "dev")) == 250
    with pytest.raises(ValueError):
        ev.load_records(path, "train")


def test_stop_time_is_the_next_such_clock_time():
    import time

    evening = time.mktime((2026, 12, 3, 22, 20, 0, 0, 0, -1))
    tonight = ev.stop_time("23:45", now=evening)
    assert tonight - evening == 85 * 60
    after_midnight = ev.stop_time("00:30", now=evening)  # passed today: tomorrow's, not at once
    assert after_midnight - evening == 130 * 60
    assert time.localtime(after_midnight)[:5] == (2026, 12, 4, 0, 30)
    assert ev.stop_time(None) is None


def test_records_from_a_start_within_the_split(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([{"case_id": i} for i in range(500)]))
    assert [r["case_id"] for r in ev.load_records(path, "test", 2, start=100)] == [350, 351]
    assert len(ev.load_records(path, "dev", start=20)) == 230
    for bad in (-1, 250):
        with pytest.raises(ValueError, match="start must be in 0..249"):
            ev.load_records(path, "dev", start=bad)


# ---- the FT internals the quality work added (fast path, keep penalty) -----------------------


@pytest.mark.parametrize(
    "maker,tmpl",
    [("make_llama", "model.layers.{}.mlp.down_proj"), ("make_gpt2", "transformer.h.{}.mlp.c_proj")],
)
def test_fast_path_equals_full_forward(monkeypatch, maker, tmpl):
    from ftedit.core import ft
    from tests import tiny

    model, tok = getattr(tiny, maker)(layers=3)
    hp = FTHyperParams(
        layers=(1, 2),
        rewrite_module_tmp=tmpl,
        lr=1e-2,
        num_steps=4,
        num_prefixes=1,
        prefix_len=2,
        objective="target_new",
    )
    req = EditRequest.from_counterfact(CF)
    fast = compute_deltas(model, tok, [req], hp)
    runner = ft._Runner(model, hp)
    batch = ft.encode(tok, [req.text], [req.target_new], "prompt_last")
    runner.hidden(batch)
    assert runner._frozen[id(batch)][1] is not None  # the shortcut was taken, not refused
    monkeypatch.setattr(ft, "_upper_stack", lambda *a: None)
    full = compute_deltas(model, tok, [req], hp)
    assert fast.losses == pytest.approx(full.losses, abs=1e-6)
    assert max(float((fast.deltas[k] - full.deltas[k]).abs().max()) for k in fast.deltas) < 1e-6


def test_keep_penalty_holds_back_stand_in_subjects():
    from ftedit.core import keep

    model, tok = make_llama(layers=3)
    snap = params_snapshot(model)
    req = EditRequest.from_counterfact(CF)
    stand_in = req.prompt.format(keep.KL_SUBJECTS[0])
    rise = {}
    for kl in (0.0, 20.0):
        res = compute_deltas(model, tok, [req], HP.replace(kl_factor=kl, num_steps=10))
        with ev.applied(model, res.deltas):
            rise[kl] = _logp(model, tok, stand_in, req.target_new)
    assert_params_equal(model, snap)
    base = _logp(model, tok, stand_in, req.target_new)
    assert rise[20.0] - base < rise[0.0] - base


@torch.no_grad()
def _logp(model, tok, prompt, target):
    from ftedit.core.ft import encode, target_logprobs

    return float(target_logprobs(model, encode(tok, [prompt], [target], "prompt_last"))[0, 0])
