"""Compact stored edits (issue 15): the forms, edit file format 2, and the workspace on it."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load

from ftedit.core.compact import compact
from ftedit.core.deltas import Deltas
from ftedit.errors import HParamsError, ImportRefusedError
from ftedit.versioning.stored import stored
from storage import codec, editfile
from tests.storekit import HP0, HP01, REQUESTS, assert_replay_equal, assert_same, open_ws, params
from tests.test_store import GOLDEN_META

W = "model.layers.0.mlp.down_proj.weight"
B = "model.layers.0.mlp.down_proj.bias"


def _delta(rows: int = 24, cols: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 1e-3


def test_parse_form_and_the_hparam_refuse_unknown_forms():
    assert codec.parse_form("lowrank:16") == ("lowrank", 16)
    assert codec.parse_form("sign") == ("sign", 0)
    for bad in ("lowrank", "lowrank:0", "bf16", "", "dense:3"):
        with pytest.raises(ValueError, match="stored form"):
            codec.parse_form(bad)
        with pytest.raises(HParamsError, match="store_as"):
            HP0.replace(store_as=bad)
    assert HP0.replace(store_as="lowrank:8").store_as == "lowrank:8"


def test_lowrank_keeps_a_low_rank_delta_and_rebuilds_in_a_fixed_order():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(24, 3, generator=g) @ torch.randn(3, 40, generator=g) * 1e-3
    parts = codec.encode(t, "lowrank:3")
    assert parts[".u"].dtype == torch.bfloat16 and tuple(parts[".u"].shape) == (24, 3)
    assert tuple(parts[".v"].shape) == (3, 40)
    r = codec.reconstruct(parts, "lowrank:3", (24, 40))
    assert r.dtype == torch.float32
    assert float((r - t).norm() / t.norm()) < 1e-2  # only the bfloat16 rounding of factors
    # The same sum written another way (separate multiply, then add, i ascending): the
    # products are exact, so it must give the same bits as the fused version.
    u, v = parts[".u"].float(), parts[".v"].float()
    ref = torch.zeros(24, 40)
    for i in range(3):
        ref = ref + u[:, i : i + 1] * v[i : i + 1, :]
    assert torch.equal(r, ref)
    # Truncation drops energy of a full-rank delta: the error is the tail of its spectrum.
    full = _delta()
    s = torch.linalg.svdvals(full.double())
    err = float((codec.roundtrip(full, "lowrank:4").double() - full.double()).norm())
    assert err == pytest.approx(float(s[4:].norm()), rel=2e-2)


def test_sign_code_is_one_bit_and_a_row_scale():
    t = _delta(5, 13)  # 65 elements: the last byte is partly padding
    parts = codec.encode(t, "sign")
    assert parts[".sign"].dtype == torch.uint8 and parts[".sign"].numel() == 9
    r = codec.reconstruct(parts, "sign", (5, 13))
    assert torch.equal(r.sign(), t.sign())
    assert torch.equal(r.abs(), t.abs().mean(1, keepdim=True).expand(5, 13))


def test_vectors_and_matrices_a_form_would_not_shrink_stay_dense():
    bias = torch.tensor([1.0, -2.0])
    assert codec.form_for(bias, "lowrank:2") == "dense"
    assert codec.form_for(_delta(4, 16), "lowrank:4") == "dense"  # full rank: no saving
    assert codec.form_for(_delta(4, 16), "lowrank:3") == "lowrank:3"
    assert codec.form_for(_delta(8, 1), "sign") == "dense"  # 1 byte + 8 scales > 8 floats
    assert codec.form_for(_delta(100, 4), "lowrank:5") == "dense"  # rank 5 > 4: not low rank
    assert codec.form_for(_delta(), "lowrank:2") == "lowrank:2"
    assert torch.equal(codec.roundtrip(bias, "sign"), bias)


def test_reconstruct_refuses_parts_that_do_not_fit():
    parts = codec.encode(_delta(), "lowrank:2")
    with pytest.raises(ValueError, match=r"part \.u should be bfloat16 \[24, 3\]"):
        codec.reconstruct(parts, "lowrank:3", (24, 40))
    with pytest.raises(ValueError, match=r"\.scale"):
        codec.reconstruct(
            {".sign": torch.zeros(120, dtype=torch.uint8), ".scale": torch.zeros(3)},
            "sign",
            (24, 40),
        )


# Changing this number changes format 2 on disk: bump COMPACT_VERSION and keep old readers.
# Pinned with the sign form on powers of two (every step exact on any machine); the layout
# (parts named name + suffix, "encoding" metadata, sorted header) is the same for lowrank,
# whose factors come from LAPACK's SVD and so are not bit-stable across libraries.
GOLDEN_V2_SHA256 = "ed79023c1346d5ba2edd538b3f56c29863fe979cff7129c28bf7467a580ee0fb"
GOLDEN_V2 = {W: _delta(), B: torch.tensor([-1.0, 0.5])}


def test_golden_bytes_pin_format_2():
    exact = {W: torch.tensor([[0.5, -0.5, 0.5], [-0.25, 0.25, 0.25]]), B: GOLDEN_V2[B]}
    data = editfile.encode(exact, GOLDEN_META, "sign")
    assert hashlib.sha256(data).hexdigest() == GOLDEN_V2_SHA256
    assert editfile.encode(dict(reversed(exact.items())), GOLDEN_META, "sign") == data
    assert_same(editfile.decode(data)[0], exact)  # a sign code of |d| = row constant is exact


def test_format_2_is_plain_safetensors_and_decodes_to_the_reconstruction(tmp_path):
    p = tmp_path / "e.safetensors"
    for form in ("lowrank:2", "sign"):
        data = editfile.encode(GOLDEN_V2, GOLDEN_META, form)
        p.write_bytes(data)
        with safe_open(str(p), framework="pt") as f:  # any safetensors reader
            assert f.metadata()["format_version"] == "2"
            keys = set(f.keys())
        sfx = codec.SUFFIXES[form.split(":")[0]]
        assert keys == {W + s for s in sfx} | {B}
        tensors, meta = editfile.decode(data)
        assert sorted(tensors) == [B, W]
        assert torch.equal(tensors[W], codec.roundtrip(GOLDEN_V2[W], form))
        assert torch.equal(tensors[B], GOLDEN_V2[B])
        assert editfile.parse_metadata(meta)["format_version"] == "2"
        assert len(data) < len(editfile.encode(GOLDEN_V2, GOLDEN_META))
    # dense still writes format 1, byte for byte as before
    assert editfile.encode(GOLDEN_V2, GOLDEN_META, "dense") == editfile.encode(
        GOLDEN_V2, GOLDEN_META
    )


@pytest.mark.parametrize("packed", [False, True])
def test_format_2_refuses_parts_its_encoding_does_not_describe(packed):
    data = editfile.encode(GOLDEN_V2, GOLDEN_META, "lowrank:2")
    parts = st_load(data)
    meta = editfile.read_header(data)["__metadata__"]
    extra = editfile._safetensors_bytes({**parts, "x.weight": torch.zeros(2)}, meta)
    with pytest.raises(ImportRefusedError, match=r"does not list: \['x.weight'\]"):
        editfile.decode(extra, packed=packed)
    missing = editfile._safetensors_bytes({k: v for k, v in parts.items() if k != W + ".v"}, meta)
    with pytest.raises(ImportRefusedError, match=r"bad compact encoding"):
        editfile.decode(missing, packed=packed)
    bad = {**parts, W + ".u": parts[W + ".u"].float()}  # checked now, not when first summed
    with pytest.raises(ImportRefusedError, match=r"part \.u should be bfloat16"):
        editfile.decode(editfile._safetensors_bytes(bad, meta), packed=packed)
    no_enc = editfile._safetensors_bytes(parts, {k: v for k, v in meta.items() if k != "encoding"})
    with pytest.raises(ImportRefusedError, match="lacks its 'encoding'"):
        editfile.decode(no_enc, packed=packed)


@pytest.mark.parametrize("form", ["lowrank:2", "sign"])
def test_packed_deltas_hold_the_parts_and_give_the_stored_bits(form):
    data = editfile.encode(GOLDEN_V2, GOLDEN_META, form)
    packed = editfile.decode(data, packed=True)[0]
    assert isinstance(packed[W], codec.Packed) and isinstance(packed[B], torch.Tensor)
    held, whole = Deltas(packed), Deltas(editfile.decode(data)[0])
    assert held == whole and W in held and "x.weight" not in held
    assert torch.equal(held[W], held[W]) and held[W] is not held[W]  # rebuilt at each lookup
    assert held.nbytes == packed[W].nbytes + 4 * 2 < whole.nbytes / 2
    assert (held + held) == (whole + whole)


def test_compact_is_what_storing_applies():
    d = Deltas(GOLDEN_V2)
    assert compact(d, "dense") is d
    for form in ("lowrank:2", "sign"):
        applied, data = stored(d, form, GOLDEN_META)
        assert_same(dict(applied), editfile.decode(data)[0])
        assert_same(dict(applied), dict(compact(d, form)))


@pytest.mark.parametrize("form", ["lowrank:2", "sign"])
def test_workspace_stores_applies_replays_and_moves_compact_edits(tmp_path, form):
    ws = open_ws(tmp_path / "a")
    base = params(ws)
    info = ws.edit(REQUESTS[0], HP01.replace(store_as=form))
    blob = ws.store.blobs.get(info.blob_sha256, what="edit")
    assert editfile.read_header(blob)["__metadata__"]["format_version"] == "2"
    live = params(ws)
    for name in info.tensor_names:  # the live delta is the stored reconstruction, exactly
        want = (base[name] + editfile.decode(blob)[0][name]).to(live[name].dtype)
        assert torch.equal(live[name], want)
    dense = ws.edit(REQUESTS[1], HP0)  # format 1 and 2 mixed in one stack
    assert_replay_equal(ws)
    assert ws.verify().ok
    ws.revert(info.id)
    ws.revert(dense.id)
    assert_same(params(ws), base)
    ws.reapply(info.id)
    assert_replay_equal(ws)
    out = ws.export(info.id, tmp_path / "e.safetensors")
    assert out.read_bytes() == blob  # one edit exports its blob as is
    other = open_ws(tmp_path / "b")
    imported = other.import_(out)
    assert imported.blob_sha256 == info.blob_sha256
    assert_same(params(other), params(ws))
    assert other.verify().ok
    for w, i in ((ws, info.id), (other, imported.id)):  # made here / read from its blob: packed
        held = w.live.deltas[i]
        assert held.nbytes < sum(4 * t.numel() for t in held.values()) / 2


def test_import_refuses_a_compact_shape_the_model_lacks_before_rebuilding(tmp_path):
    """A lowrank file is small whatever shape its encoding claims; the claim is checked against
    the model's parameters before anything is rebuilt (10^6 x 10^6 would be 4 TB), and nothing
    is stored."""
    ws = open_ws(tmp_path / "a")
    info = ws.edit(REQUESTS[0], HP01.replace(store_as="lowrank:2"))
    blob = ws.store.blobs.get(info.blob_sha256, what="edit")
    parts, meta = st_load(blob), editfile.read_header(blob)["__metadata__"]
    encoding = json.loads(meta["encoding"])
    name = next(n for n in sorted(encoding) if encoding[n]["form"] == "lowrank:2")
    other = open_ws(tmp_path / "b")
    base = params(other)
    for enc, match in (
        (
            {**encoding, name: {"form": "lowrank:2", "shape": [10**6, 10**6]}},
            r"has shape \[1000000",
        ),
        ({**encoding, "lm_head.nope": encoding[name]}, "lm_head.nope is not a parameter"),
    ):
        path = tmp_path / "crafted.safetensors"
        path.write_bytes(editfile._safetensors_bytes(parts, {**meta, "encoding": json.dumps(enc)}))
        with pytest.raises(ImportRefusedError, match=match):
            other.import_(path)
        assert other.history() == []
        assert_same(params(other), base)


def test_a_compact_edit_that_passes_its_box_after_truncation_imports(tmp_path):
    """A low-rank stored form applies the truncation of a boxed delta, which may pass the box
    (a default edit of the real model did, by 1.22x): export -> import must still work."""
    eps = 2e-3
    hp = HP0.replace(num_steps=6, lr=5e-2, norm_constraint=eps, store_as="lowrank:1")
    ws = open_ws(tmp_path / "a")
    info = ws.edit(REQUESTS[0], hp)
    (name,) = info.tensor_names
    applied = ws.live.deltas[info.id][name]
    assert float(applied.abs().max()) > eps * 1.01  # the case: the truncation passed the box
    other = open_ws(tmp_path / "b")
    other.import_(ws.export(1, tmp_path / "e.safetensors"))
    assert_same(params(other), params(ws))
