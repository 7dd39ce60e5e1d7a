"""bench/sequential.py --checkpoint: a stack made in two sittings is the stack made in one;
bench/forgetting.py rebuilds a checkpoint's stack to score its edits then and now."""

from __future__ import annotations

import json

import pytest
import torch

from storage import editfile
from tests.benchkit import load_bench
from tests.test_nullspace import hp
from tests.tiny import make_llama

sequential = load_bench("sequential")


def _zsre(src: str, subject: str, answer: str, loc: str, loc_ans: str) -> dict:
    return {
        "src": src,
        "subject": subject,
        "answers": [answer],
        "rephrase": src.replace("where", "what"),
        "loc": loc,
        "loc_ans": loc_ans,
    }


RECORDS = [
    _zsre("where is the Eiffel Tower located ?", "Eiffel Tower", "Rome", "who plays jazz", "Toko"),
    _zsre("where is Nokia located ?", "Nokia", "Japan", "the capital of France", "Paris"),
    _zsre("where was Danielle Darrieux born ?", "Danielle Darrieux", "Berlin", "Apple", "Google"),
    _zsre("where is Angola located ?", "Angola", "Europe", "the language of Italy", "Italian"),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, small_pool):
    """A private model cache, and the three-city keep pool (conftest.small_pool)."""
    monkeypatch.setenv("FTEDIT_CACHE", str(tmp_path / "cache"))


def _same(a: dict, b: dict) -> None:
    """Two results equal but for the seconds each edit took."""
    drop = {"seconds"}
    assert [{k: v for k, v in e.items() if k not in drop} for e in a["per_edit"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in b["per_edit"]
    ]
    assert a["final"] == b["final"] and a["stack_norm"] == b["stack_norm"]


def test_a_run_resumed_from_its_checkpoint_makes_the_edits_an_unbroken_run_makes(tmp_path):
    h = hp(
        "llama",
        norm_constraint=5e-3,
        keep_nullspace=True,
        keep_subjects=1,
        keep_prior_edits=10,
        keep_prior_exact=2,
        store_as="lowrank:4",
    )
    whole = sequential.run(*make_llama(), RECORDS, h, every=2, probe=1)
    ckpt = tmp_path / "ckpt"
    first = sequential.run(*make_llama(), RECORDS, h, 2, 1, deadline=0, checkpoint=ckpt)
    assert len(first["per_edit"]) == 1  # past the deadline after the first edit
    state = json.loads((ckpt / "state.json").read_text())
    assert len(state["per_edit"]) == 1 and (ckpt / "edit-00001.safetensors").exists()
    # a new sitting: a fresh model from the same base, the stack rebuilt from the files
    rest = sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=ckpt)
    _same(rest, whole)
    assert [p["edits"] for p in rest["curve"]] == [0, 1, 2, 4]  # where the first sitting ended
    assert [p for p in rest["curve"] if p["edits"] != 1] == whole["curve"]
    assert rest["per_edit"][1]["delta_norm"] > 0  # the edits after the break did something
    # a checkpoint made before a field existed resumes when that field is at its default
    del state["settings"]["hparams"]["keep_prior_box"]
    (ckpt / "state.json").write_text(json.dumps(state))
    again = sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=ckpt)
    _same(again, whole)
    # other settings are refused before anything is edited or written
    before = sorted(p.name for p in ckpt.iterdir())
    with pytest.raises(SystemExit, match=r"other settings \(hparams differ\)"):
        sequential.run(*make_llama(), RECORDS, h.replace(lr=2e-2), 2, 1, checkpoint=ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_forgetting_rebuilds_a_checkpoints_stack_and_scores_each_edit_then_and_now(tmp_path):
    """bench/forgetting.py: with the first k edits of a checkpoint stacked, edit k scores
    exactly what it scored right after it was made (the same weights, rebuilt from the files);
    other records or more edits than it holds are refused."""
    forgetting = load_bench("forgetting")
    h = hp("llama", norm_constraint=5e-3, keep_nullspace=True, keep_subjects=1,
           keep_prior_edits=10, store_as="lowrank:4")  # fmt: skip
    ckpt = tmp_path / "ckpt"
    sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=ckpt)
    made = json.loads((ckpt / "state.json").read_text())["per_edit"]
    for k in range(1, len(RECORDS) + 1):
        rows = forgetting.run(*make_llama(), RECORDS, ckpt, k)
        assert [r["edit"] for r in rows] == list(range(1, k + 1))
        assert [r["right_after"] for r in rows] == [e["efficacy_now"] for e in made[:k]]
        assert rows[-1]["now"] == rows[-1]["right_after"]
    # the model is left as base + the first k stored deltas, in id order
    model, tok = make_llama()
    want = {n: p.detach().clone() for n, p in model.named_parameters()}
    forgetting.run(model, tok, RECORDS, ckpt, 3)
    for i in (1, 2, 3):
        tensors, _ = editfile.decode((ckpt / f"edit-{i:05d}.safetensors").read_bytes())
        for name, d in tensors.items():
            want[name] += d
    assert all(torch.equal(p, want[n]) for n, p in model.named_parameters())
    ages = forgetting.by_age(
        [{"right_after": a, "now": b} for a, b in [(100, 50), (50, 100), (100, 100)]], 2
    )
    assert [(a["edits"], a["n"], a["lost"], a["now"]) for a in ages] == [
        ("1-2", 2, 25.0, 75.0),
        ("3-3", 1, 0.0, 100.0),
    ]
    with pytest.raises(SystemExit, match="other records"):
        forgetting.run(*make_llama(), RECORDS[:3], ckpt, 1)
    with pytest.raises(SystemExit, match="holds 4 edits"):
        forgetting.run(*make_llama(), RECORDS, ckpt, 5)
