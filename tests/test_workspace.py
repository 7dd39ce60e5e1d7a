"""Workspace on tiny models: the invariant, revert warnings, diff, verify, import, save."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save

from ftedit.core.models import Fingerprint
from ftedit.errors import ImportRefusedError, IntegrityError, StoreError
from storage import editfile
from tests import pgkit
from tests.storekit import (
    FP,
    HP0,
    HP01,
    HP1,
    REQUESTS,
    assert_replay_equal,
    assert_same,
    loaded,
    open_ws,
    params,
)

# Every test here runs on SQLite and on PostgreSQL (tests/conftest.py: database_url).
pytestmark = pytest.mark.usefixtures("database_url")


def test_edit_is_stored_applied_and_replayed_exactly():
    ws = open_ws()
    base = params(ws)
    info = ws.edit(REQUESTS[0], HP0)
    assert info.id == 1 and info.status == "active" and info.origin == "trained"
    assert info.tensor_names == ["model.layers.0.mlp.down_proj.weight"]
    assert (
        set(info.metrics) == {"before", "after", "neighbours"} and len(info.metrics["after"]) == 1
    )
    assert info.metrics["after"][0]["p_target_new"] > info.metrics["before"][0]["p_target_new"]
    assert info.steps == 2 and len(info.losses) == 2 and info.seconds > 0
    assert ws.store.blobs.exists(info.blob_sha256)
    name = info.tensor_names[0]
    assert not torch.equal(params(ws)[name], base[name])
    assert_replay_equal(ws)
    assert ws.history() == [ws.get(1)] and ws.active_ids() == [1]
    assert [e.kind for e in ws.events()] == ["created"]


def test_revert_all_gives_the_base_bit_for_bit():
    ws = open_ws()
    base = params(ws)
    for r, hp in zip(REQUESTS, (HP0, HP1, HP01), strict=False):
        ws.edit(r, hp)
    for edit_id in (2, 1, 3):
        ws.revert(edit_id)
    assert_same(params(ws), base)
    assert ws.active_ids() == []


def test_revert_warns_about_later_edits_that_share_tensors():
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    ws.edit(REQUESTS[1], HP1)  # other tensor: no warning for #1 from it
    ws.edit(REQUESTS[2], HP01)
    res = ws.revert(1)
    assert res.edit.status == "reverted"
    assert (
        res.warning == "edit #3 was trained on top of it; removing it is exact arithmetic, "
        "not 'never made'"
    )
    assert ws.revert(3).warning is None
    assert_replay_equal(ws)
    assert ws.reapply(1).edit.status == "active"
    assert_replay_equal(ws)
    with pytest.raises(StoreError, match="already active"):
        ws.reapply(1)


def test_checkout_restores_a_past_active_set_and_logs_it():
    ws = open_ws()
    for r in REQUESTS[:3]:
        ws.edit(r, HP01)
    v2_params = None
    ws.revert(3)  # v4: state after v2 again
    v2_params = params(ws)
    ws.revert(1)
    assert ws.checkout(2) == [1, 2]
    assert_same(params(ws), v2_params)
    assert [(e.kind, e.note) for e in ws.events()][-1] == ("reapplied", "checkout v2")
    assert ws.checkout("v3") == [1, 2, 3]
    assert_replay_equal(ws)
    with pytest.raises(StoreError, match="no version v50"):
        ws.checkout(50)


def test_generate_base_restores_the_live_weights_exactly():
    ws = open_ws()
    base_answer = ws.generate("the Eiffel Tower is located in", 6)
    ws.edit(REQUESTS[0], HP01)
    live = params(ws)
    assert ws.generate("the Eiffel Tower is located in", 6, base=True) == base_answer
    assert_same(params(ws), live)


def test_diff_of_two_edits_and_two_versions():
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    ws.edit(REQUESTS[1], HP01)
    live = params(ws)
    d = ws.diff(1, 2)
    assert d["shared_tensors"] == ["model.layers.0.mlp.down_proj.weight"]
    assert d["only_a"] == [] and d["only_b"] == ["model.layers.1.mlp.down_proj.weight"]
    assert set(d["layer_norms"]["b"]) == {0, 1}
    # cosine over all tensors (absent = zero): only the shared layer-0 tensor contributes to
    # the dot product, both of b's tensors to its norm
    l0, l1 = (f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1))
    a0, b0, b1 = (ws.deltas_of(ws.get(i))[n].double() for i, n in ((1, l0), (2, l0), (2, l1)))
    expected = float((a0 * b0).sum() / (a0.norm() * (b0.norm() ** 2 + b1.norm() ** 2).sqrt()))
    assert math.isclose(d["cosine"], expected, rel_tol=1e-6) and abs(expected) < 1
    assert d["tensor_norms"]["model.layers.1.mlp.down_proj.weight"]["a"] == 0.0
    assert [row["edit"] for row in d["behaviour"]] == [1, 2]
    row = d["behaviour"][0]
    assert 0 < row["a"]["p_target_new"] < 1 and 0 < row["b"]["p_target_true"] < 1
    json.dumps(d)  # JSON-safe for the CLI and the app
    assert_same(params(ws), live)
    dv = ws.diff("v1", "v2")  # {#1} vs {#1, #2}: only #2 differs
    assert dv["a"]["edits"] == [1] and dv["b"]["edits"] == [1, 2]
    assert [row["edit"] for row in dv["behaviour"]] == [2]
    assert math.isclose(dv["norm"]["a"], d["norm"]["a"], rel_tol=1e-6)
    assert_same(params(ws), live)
    with pytest.raises(StoreError, match="compare edit ids"):
        ws.diff("x", 1)


def test_verify_passes_and_catches_a_tampered_live_weight():
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    rep = ws.verify()
    assert rep.ok and rep.checked_edits == 1 and rep.checked_tensors == 1 and rep.orphans == []
    with torch.no_grad():
        ws.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    rep = ws.verify()
    assert not rep.ok and "differ from a replay" in rep.problems[0]


def test_a_flipped_byte_is_caught_naming_the_edit_and_others_stay_usable():
    ws = open_ws()
    for r, hp in zip(REQUESTS[:3], (HP0, HP1, HP0), strict=False):
        ws.edit(r, hp)
    path = ws.store.blobs.path(ws.get(2).blob_sha256)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    rep = ws.verify()
    assert not rep.ok and any("edit #2" in p and "corrupt" in p for p in rep.problems)
    fresh = open_ws(ws.home)  # replay: opens, names the edit, keeps the others
    assert "edit #2" in fresh.broken[2]
    assert fresh.revert(3).warning is None and fresh.reapply(3)
    with pytest.raises(IntegrityError, match="edit #2"):
        fresh.diff(2, 3)
    fresh.revert(2)  # reverting the broken edit is the remedy
    with pytest.raises(IntegrityError, match="edit #2"):
        fresh.reapply(2)
    assert fresh.get(2).status == "reverted"
    problems = fresh.verify().problems  # the corrupt blob is still reported, and only it
    assert problems and all("edit #2" in p for p in problems)


def test_export_import_round_trip_between_homes(tmp_path):
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    out = ws.export(1, tmp_path / "e.safetensors")
    assert out.read_bytes() == ws.store.blobs.path(ws.get(1).blob_sha256).read_bytes()
    other = open_ws(tmp_path / "other")
    info = other.import_(out)
    assert info.origin == "imported" and info.requests == [REQUESTS[0]]
    assert [e.kind for e in other.events()] == ["imported"]
    assert_same(params(other), params(ws))
    assert other.verify().ok
    both = ws.export([1], tmp_path / "one.safetensors")
    assert both.read_bytes() == out.read_bytes()


def test_export_of_several_edits_sums_them(tmp_path):
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    ws.edit(REQUESTS[1], HP01)
    out = ws.export([1, 2], tmp_path / "two.safetensors")
    _, meta = editfile.decode(out.read_bytes())
    assert len(json.loads(meta["requests"])) == 2
    other = open_ws(tmp_path / "other")
    other.import_(out)
    for name, p in params(other).items():  # one summed delta vs two stacked: float32 sums
        assert torch.allclose(p, params(ws)[name], atol=1e-6)


def _refused(ws, path, match):
    before_params, before_edits = params(ws), ws.history()
    blobs = ws.store.blobs.list()
    with pytest.raises(ImportRefusedError, match=match):
        ws.import_(path)
    assert_same(params(ws), before_params)
    assert ws.history() == before_edits and ws.store.blobs.list() == blobs


def _write(tmp_path, name, tensors, meta):
    p = tmp_path / name
    p.write_bytes(save(tensors, metadata=meta))
    return p


def test_import_refuses_bad_files_and_changes_nothing(tmp_path):
    src = open_ws(tmp_path / "src")
    src.edit(REQUESTS[0], HP0)
    good = src.export(1, tmp_path / "good.safetensors")
    tensors, meta = editfile.decode(good.read_bytes())
    name = next(iter(tensors))
    ws = open_ws()
    ws.edit(REQUESTS[1], HP1)
    other_base = _other_base_file(tmp_path)
    _refused(ws, other_base, "made for another base model")
    _refused(ws, _write(tmp_path, "shape.st", {name: torch.zeros(3, 3)}, meta), "shape")
    nan = tensors[name].clone()
    nan[0, 0] = float("nan")
    _refused(ws, _write(tmp_path, "nan.st", {name: nan}, meta), "NaN")
    ints = tensors[name].to(torch.int32)
    _refused(ws, _write(tmp_path, "int.st", {name: ints}, meta), "dtype I32")
    _refused(ws, _write(tmp_path, "half.st", {name: tensors[name].half()}, meta), "dtype F16")
    _refused(
        ws, _write(tmp_path, "name.st", {"lm_head.nope": tensors[name]}, meta), "not a parameter"
    )
    _refused(ws, _write(tmp_path, "meta.st", tensors, {"format": "x"}), "not an ftedit edit")
    (tmp_path / "junk.st").write_bytes(b"junk")
    _refused(ws, tmp_path / "junk.st", "not a safetensors file")
    ws.import_(good)  # and the good one still goes in
    assert ws.verify().ok


def _other_base_file(tmp_path):
    """An edit file made on a tiny Llama with other weights (seed 1): same names and shapes."""
    fp = Fingerprint("tiny-llama-other", "test", None, "2" * 64, "float32")
    from ftedit.versioning.workspace import Workspace

    ws = Workspace(
        home=tmp_path / "other",
        loaded=loaded(1, fingerprint=fp),
        database_url=pgkit.url_for_home(tmp_path / "other"),
    )  # own db on postgres
    ws.edit(REQUESTS[0], HP0)
    return ws.export(1, tmp_path / "other.safetensors")


def test_identical_edits_share_one_blob():
    ws = open_ws()
    a = ws.edit(REQUESTS[0], HP0)
    ws.revert(1)
    b = ws.edit(REQUESTS[0], HP0)  # same base, same stack, same seed: same deltas and bytes
    assert a.blob_sha256 == b.blob_sha256 and len(ws.store.blobs.list()) == 1


def test_save_model_reloads_bit_equal(tmp_path):
    from transformers import AutoModelForCausalLM

    ws = open_ws()
    ws.edit(REQUESTS[0], HP01)
    out = ws.save_model(tmp_path / "saved")
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    again = AutoModelForCausalLM.from_pretrained(out)
    assert_same(params(again), params(ws))


def test_gpt2_conv1d_edits_replay_exactly():
    ws = open_ws(arch="gpt2")
    hp = ws.default_hparams().replace(num_steps=2, lr=1e-2, norm_constraint=None)
    assert hp.rewrite_module_tmp == "transformer.h.{}.mlp.c_proj"
    ws.edit(REQUESTS[0], hp)
    ws.edit(REQUESTS[1], hp)
    ws.revert(1)
    assert_same(params(ws), params(open_ws(ws.home, arch="gpt2")))


def test_stores_keep_base_models_apart(tmp_path):
    ws = open_ws()
    ws.edit(REQUESTS[0], HP0)
    fp = Fingerprint("tiny-llama-other", "test", None, "2" * 64, "float32")
    from ftedit.versioning.workspace import Workspace

    other = Workspace(home=ws.home, loaded=loaded(1, fingerprint=fp))
    assert other.history() == [] and other.active_ids() == []
    assert FP.name == ws.get(1).base_model


def test_duplicate_warning_says_count_twice_only_while_the_first_copy_is_active(tmp_path):
    from ftedit.versioning.transfer import duplicate_warning

    ws = open_ws(tmp_path / "h")
    info = ws.edit(REQUESTS[0], HP0)
    out = ws.export(info.id, tmp_path / "e.safetensors")
    assert duplicate_warning(ws, out) == (
        "this file is already edit #1 (active); it was imported again, so its deltas now "
        "count twice: revert one of the two to undo that"
    )
    ws.revert(info.id)
    assert duplicate_warning(ws, out) == (
        "this file is already edit #1 (reverted); it was imported again"
    )
    assert duplicate_warning(ws, tmp_path / "missing.safetensors") is None


def test_keep_prior_edits_keeps_the_live_edits_subject_keys(small_pool):
    """With keep_prior_edits the workspace passes the branch's live edits to the training: a new
    edit leaves the subject key of a live earlier one as it was; a reverted one is not kept."""
    from ftedit.core.key_reads import each_key

    ws = open_ws()
    hp = HP1.replace(
        num_steps=4,
        keep_nullspace=True,
        keep_subjects=1,
        subject_keys_only=True,
        keep_prior_edits=2,
    )
    name = "model.layers.1.mlp.down_proj.weight"

    def moved(edit_id: int, head: str) -> float:
        keys: list[torch.Tensor] = []
        each_key(ws.model, ws.tok, hp, [head], lambda i, k: keys.append(k), None, True)
        k = keys[0].double().T  # the key under the stack the edit was trained on
        D = ws.deltas_of(ws.store.get(edit_id))[name].double()
        return float((D @ k).norm() / (D.norm() * k.norm()))

    ws.edit(REQUESTS[1], hp)  # "The capital of France"
    ws.revert(1)
    ws.edit(REQUESTS[2], hp)  # trained with nothing live: may move France's key
    assert moved(2, "The capital of France") > 1e-3
    ws.reapply(1)
    ws.revert(2)  # live: edit 1 only, so edit 3 is trained on base + edit 1
    ws.edit(REQUESTS[0], hp)
    assert moved(3, "The capital of France") < 1e-4
