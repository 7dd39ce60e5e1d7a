"""Helpers for the store / workspace tests: tiny workspaces and bit-exact comparisons."""

from __future__ import annotations

from pathlib import Path

import torch

from ftedit.core.hparams import FTHyperParams
from ftedit.core.models import Fingerprint, LoadedModel
from ftedit.core.requests import EditRequest
from ftedit.versioning.workspace import Workspace
from tests import pgkit
from tests.tiny import make_gpt2, make_llama

# Tiny models on a shared 2-core machine: one thread is ~10x faster than two fighting threads.
torch.set_num_threads(1)

FP = Fingerprint(
    name="tiny-llama", source="test:tiny", revision=None, file_sha256="1" * 64, dtype="float32"
)
# Fast, unconstrained, big enough lr that the weights really move.
HP0 = FTHyperParams(layers=(0,), num_steps=2, lr=1e-2, norm_constraint=None)
HP1 = HP0.replace(layers=(1,))
HP01 = HP0.replace(layers=(0, 1))
REQUESTS = [
    EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {} is", "France", "Berlin", "Paris"),
    EditRequest("{} speaks", "Danielle Darrieux", "English", "French"),
    EditRequest("{} plays", "Toko Yasuda", "piano", "guitar"),
]


def loaded(seed: int = 0, arch: str = "llama", fingerprint: Fingerprint = FP) -> LoadedModel:
    model, tok = (make_llama if arch == "llama" else make_gpt2)(seed)
    return LoadedModel(model, tok, fingerprint, 0.0)


def open_ws(home: Path | None = None, seed: int = 0, **kw) -> Workspace:
    """A workspace on a freshly built tiny Llama (same seed = same base weights)."""
    # Under the postgres fixture a second home gets a database of its own (None otherwise).
    return Workspace(home=home, loaded=loaded(seed, **kw), database_url=pgkit.url_for_home(home))


def params(ws_or_model) -> dict[str, torch.Tensor]:
    model = ws_or_model.model if isinstance(ws_or_model, Workspace) else ws_or_model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    bad = [n for n in a if not torch.equal(a[n], b[n])]
    assert not bad, f"tensors differ: {bad}"


def assert_replay_equal(ws: Workspace) -> None:
    """Live weights equal those of a fresh process that replays the same store."""
    assert_same(params(ws), params(open_ws(ws.home)))


def add_row(store, base: int, request: EditRequest, sha: str, tensor: str = "t", **fields):
    """A stored row for a fake edit (no model, HP0): what the store tests need of add_edit."""
    row = {"metrics": {}, "losses": [], "steps": 0, "seconds": 0.0, **fields}
    return store.add_edit(
        base,
        requests=[request.to_dict()],
        hparams=HP0.to_dict(),
        method="FT-L",
        objective=HP0.objective,
        blob_sha256=sha,
        tensor_names=[tensor],
        **row,
    )
