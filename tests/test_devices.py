"""Models dispatched by accelerate (tiny, CPU): a device_map with a block offloaded to disk is
the closest CPU comes to a model split over devices. Each block then runs under its own hook,
the embedding's weights may not say where inputs go, and an offloaded block's weights are on
``meta`` between calls."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model

from ftedit.core.ft import _Runner, compute_deltas, encode
from ftedit.core.hparams import FTHyperParams
from ftedit.core.models import Fingerprint, LoadedModel, input_device, module_device, offloaded
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError
from ftedit.versioning.workspace import Workspace
from tests.tiny import make_gpt2, make_llama

REQ = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")
LAYOUTS = {  # (maker, rewrite template, modules outside the blocks)
    "llama": (make_llama, "model.layers.{}.mlp.down_proj", ("embed_tokens", "norm", "rotary_emb")),
    "gpt2": (make_gpt2, "transformer.h.{}.mlp.c_proj", ("wte", "wpe", "ln_f")),
}


def dispatched(arch: str, tmp_path, disk: int = 2, seed: int = 0):
    """A 3-block model whose block ``disk`` is offloaded to disk, the rest on "cpu"."""
    make, tmpl, outer = LAYOUTS[arch]
    model, tok = make(seed, layers=3)
    top = tmpl.split(".{}")[0].rsplit(".", 1)[0]  # "model" / "transformer"
    blocks = tmpl.split(".{}")[0]
    device_map = {f"{top}.{m}": "cpu" for m in outer} | {"lm_head": "cpu"}
    device_map |= {f"{blocks}.{i}": "disk" if i == disk else "cpu" for i in range(3)}
    folder = tmp_path / f"offload-{arch}-{seed}-{len(list(tmp_path.iterdir()))}"
    model = dispatch_model(model, device_map, main_device="cpu", offload_dir=str(folder))
    return model, tok


def hp(arch: str, **kw) -> FTHyperParams:
    base = dict(rewrite_module_tmp=LAYOUTS[arch][1], lr=1e-2, num_steps=5, norm_constraint=1e-3)
    return FTHyperParams(**{**base, **kw})


def resident(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.device.type != "meta"}


def assert_same(a, b) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(params=sorted(LAYOUTS))
def arch(request):
    return request.param


def test_devices_come_from_the_hooks(arch, tmp_path):
    model, _ = dispatched(arch, tmp_path)
    blocks = model.get_submodule(LAYOUTS[arch][1].split(".{}")[0])
    w = LAYOUTS[arch][1].format(2) + ".weight"
    assert model.get_parameter(w).device.type == "meta"  # between calls
    assert module_device(blocks[2]) == torch.device("cpu") == input_device(model)
    assert offloaded(model, w) and not offloaded(model, LAYOUTS[arch][1].format(1) + ".weight")


def test_dispatched_edit_equals_the_plain_one(arch, tmp_path):
    """Index tensors, the final hidden state under the hooks, the keep penalty and the frozen-
    prefix replay (blocks below the edited one, and an offloaded block above it)."""
    model, tok = dispatched(arch, tmp_path)
    plain, _ = LAYOUTS[arch][0](0, layers=3)
    h = hp(arch, layers=(1,), kl_factor=0.5, keep_subjects=0)
    runner, batch = _Runner(model, h), encode(tok, [REQ.text], [" Rome"], "prompt_last")
    runner.hidden(batch)
    assert runner._frozen[id(batch)][1] is not None  # the replay reproduces the full forward
    before = resident(model)
    got = compute_deltas(model, tok, [REQ], h)
    assert_same(resident(model), before)
    want = compute_deltas(plain, tok, [REQ], h)
    assert got.deltas == want.deltas and got.losses == want.losses
    assert got.deltas.max_abs() > 0


def test_an_offloaded_edited_layer_is_refused(arch, tmp_path):
    model, tok = dispatched(arch, tmp_path)
    before = resident(model)
    with pytest.raises(HParamsError, match=r"layer 2 is offloaded .* max_memory .* fewer"):
        compute_deltas(model, tok, [REQ], hp(arch, layers=(1, 2)))
    assert_same(resident(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_workspace_on_a_dispatched_model(tmp_path):
    fp = Fingerprint("tiny-llama-3", "test:tiny", None, "3" * 64, "float32")

    def open_ws(home=None):
        model, tok = dispatched("llama", tmp_path)
        return Workspace(home=home, loaded=LoadedModel(model, tok, fp, 0.0))

    ws = open_ws()
    base = resident(ws.model)
    for layers in ((0,), (1,), (0, 1)):
        ws.edit(REQ, hp("llama", layers=layers, norm_constraint=None))
    assert not torch.equal(resident(ws.model)["model.layers.1.mlp.down_proj.weight"],
                           base["model.layers.1.mlp.down_proj.weight"])  # fmt: skip
    assert_same(resident(ws.model), resident(open_ws(ws.home).model))  # replay == live
    assert ws.verify().ok
    for edit_id in (2, 3, 1):
        ws.revert(edit_id)
    assert_same(resident(ws.model), base)
