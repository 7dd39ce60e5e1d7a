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
checkpoints = load_bench("checkpoints")


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
    # --metric tokens rebuilds the stack edit by edit: on zsRE records it is the run's own
    # efficacy, so right after each edit it scores what the run stored then (a stack that
    # forgets, no box: the first edits are lost under the later ones)
    loose = tmp_path / "loose"
    h2 = h.replace(norm_constraint=None, lr=0.2, num_steps=20)
    sequential.run(*make_llama(), RECORDS, h2, 2, 1, checkpoint=loose)
    stored = [e["efficacy_now"] for e in json.loads((loose / "state.json").read_text())["per_edit"]]
    rows = forgetting.run(*make_llama(), RECORDS, loose, 4, metric="tokens")
    assert [r["right_after"] for r in rows] == pytest.approx(stored)
    plain = forgetting.run(*make_llama(), RECORDS, loose, 4)
    assert [r["now"] for r in rows] == pytest.approx([r["now"] for r in plain])
    assert any(r["now"] < r["right_after"] for r in rows)  # then and now differ here
    with pytest.raises(SystemExit, match="other records"):
        forgetting.run(*make_llama(), RECORDS[:3], ckpt, 1)
    with pytest.raises(SystemExit, match="holds 4 edits"):
        forgetting.run(*make_llama(), RECORDS, ckpt, 5)


def test_a_branch_goes_on_from_another_runs_first_edits_under_other_hparams(tmp_path):
    """bench/sequential.py --branch-from: the branch holds the other run's first n edits bit
    for bit and goes on under its own hparams as a run of those settings resumed at n would;
    it can be continued, and a folder holding another run, other curve settings or more edits
    than the source holds are refused, with nothing written."""
    h = hp("llama", norm_constraint=5e-3, keep_nullspace=True, keep_subjects=1,
           keep_prior_edits=10, store_as="lowrank:4")  # fmt: skip
    other = h.replace(norm_constraint=4e-3)
    src, dst = tmp_path / "src", tmp_path / "dst"
    made = sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=src)
    got = sequential.run(*make_llama(), RECORDS, other, 2, 1, checkpoint=dst, branch_from=(src, 2))
    assert got["branch"] == {"from": str(src), "at": 2, "hparams": h.to_dict()}
    for i in (1, 2):
        name = f"edit-{i:05d}.safetensors"
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    assert got["per_edit"][:2] == made["per_edit"][:2]
    assert got["curve"][:2] == made["curve"][:2]  # edits 0 and 2: the source's scores
    # the reference: the source's first two edits, then `other` (a resumed run of its own)
    ref = tmp_path / "ref"
    ref.mkdir()
    state = json.loads((src / "state.json").read_text())
    for i in (1, 2):
        name = f"edit-{i:05d}.safetensors"
        (ref / name).write_bytes((src / name).read_bytes())
    state |= {"per_edit": state["per_edit"][:2], "curve": state["curve"][:2]}
    state["settings"]["hparams"] = other.to_dict()
    (ref / "state.json").write_text(json.dumps(state))
    _same(got, sequential.run(*make_llama(), RECORDS, other, 2, 1, checkpoint=ref))
    assert got["per_edit"][2]["delta_norm"] != made["per_edit"][2]["delta_norm"]  # other hparams
    again = sequential.run(
        *make_llama(), RECORDS, other, 2, 1, checkpoint=dst, branch_from=(src, 2)
    )
    _same(again, got)  # the branch continued (here: already whole), not started again
    for bad, match in (
        (dict(checkpoint=dst, branch_from=(src, 1)), "already holds another run"),
        (dict(checkpoint=tmp_path / "x", branch_from=(src, 5)), "holds 4 edits"),
    ):
        with pytest.raises(SystemExit, match=match):
            sequential.run(*make_llama(), RECORDS, other, 2, 1, **bad)
    with pytest.raises(SystemExit, match=r"other settings \(every differ\)"):
        sequential.run(*make_llama(), RECORDS, other, 3, 1, checkpoint=tmp_path / "y",
                       branch_from=(src, 2))  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_spread_stack_edits_each_group_in_turn_and_keeps_its_own_groups_edits(
    tmp_path, monkeypatch
):
    """--layer-groups 0 --group-edits 2 on layers (1,): edits 1-2 change block 1 only, 3-4
    block 0 only; each edit is given the earlier edits of its own group to keep."""
    h = hp("llama", keep_nullspace=True, keep_prior_edits=10, store_as="lowrank:4")
    spread = sequential.Spread([h.layers, [0]], 2)  # a tuple: the hparams' own layers
    kept: list[list[str]] = []
    real = sequential.compute_deltas

    def spy(model, tok, requests, hparams, prior=()):
        kept.append([r.subject for r in prior])
        return real(model, tok, requests, hparams, prior=prior)

    monkeypatch.setattr(sequential, "compute_deltas", spy)
    ckpt = tmp_path / "spread"
    first = sequential.run(
        *make_llama(), RECORDS, h, 2, 1, deadline=0, checkpoint=ckpt, spread=spread
    )
    assert len(first["per_edit"]) == 1
    out = sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=ckpt, spread=spread)
    assert kept == [[], ["Eiffel Tower"], [], ["Danielle Darrieux"]]  # resumed after the first
    for i, block in [(1, 1), (2, 1), (3, 0), (4, 0)]:
        tensors, _ = editfile.decode((ckpt / f"edit-{i:05d}.safetensors").read_bytes())
        assert sorted(tensors) == [f"model.layers.{block}.mlp.down_proj.weight"]
    assert all(e["delta_norm"] > 0 for e in out["per_edit"])
    # forgetting.py stacks every group's tensors: base + the four stored deltas
    model, tok = make_llama()
    want = {n: p.detach().clone() for n, p in model.named_parameters()}
    load_bench("forgetting").run(model, tok, RECORDS, ckpt, 4)
    for i in range(1, 5):
        for name, d in checkpoints.load_edit(ckpt, i).items():
            want[name] += d
    assert all(torch.equal(p, want[n]) for n, p in model.named_parameters())
    everyone = sequential.Spread([h.layers, [0]], 2, keep="all")
    assert everyone.edit(h, ["a", "b", "c"]) == (h.replace(layers=[0]), ["a", "b", "c"])
    assert spread.edit(h, ["a", "b", "c"]) == (h.replace(layers=[0]), ["c"])
    with pytest.raises(SystemExit, match="other settings"):  # resumed without the groups
        sequential.run(*make_llama(), RECORDS, h, 2, 1, checkpoint=ckpt)
    for other in (None, everyone):  # edit 3 was made on block 0 keeping its own group's
        with pytest.raises(SystemExit, match="branch where the two agree"):
            sequential.run(
                *make_llama(), RECORDS, h, 2, 1, checkpoint=tmp_path / "b",
                branch_from=(ckpt, 3), spread=other,
            )  # fmt: skip
        assert not (tmp_path / "b").exists()
    # the same groups: a branch past the first group goes on from edit 3 as it was made
    got = sequential.run(
        *make_llama(), RECORDS, h, 2, 1, checkpoint=tmp_path / "b", branch_from=(ckpt, 3),
        spread=spread,
    )  # fmt: skip
    assert got["per_edit"][:3] == out["per_edit"][:3] and len(got["per_edit"]) == 4
    assert got["per_edit"][3]["delta_norm"] > 0
    assert sequential._layers("8-11") == [8, 9, 10, 11] and sequential._layers("3") == [3]
