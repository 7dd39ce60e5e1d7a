"""The keep penalty's other subjects (hparams.keep_subjects): the pool, the choice, the cache."""

from __future__ import annotations

import json

import pytest
import torch

from ftedit.core import evaluate as ev
from ftedit.core import keep
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.keep import kl_texts, nearest_subjects
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError
from tests.tiny import assert_params_equal, make_llama, params_snapshot

POOL = ("Paris", "Rome", "London", "Berlin", "Tokyo", "Eiffel Tower", "France", "Italy")
REQ = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")
HP = FTHyperParams(layers=(0, 1), lr=5e-2, num_steps=10, norm_constraint=None)


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(keep, "_subject_pool", lambda: POOL)
    keep._POOL_CACHE.clear()
    return POOL


def test_shipped_pool_comes_from_dev_and_names_nothing_the_test_split_scores(data_dir):
    """The pool (bench/make_keep_subjects.py): dev records' subjects and the subjects of their
    neighbourhood and attribute prompts; no name that any test record's text holds, so the
    keep prompts never protect what the test split scores."""
    names = keep._subject_pool()
    assert len(names) >= 1000 and len(set(names)) == len(names)
    assert all(n and not n.startswith("#") and n == n.strip() for n in names)
    records = json.loads((data_dir / "counterfact-sample.json").read_text())
    dev_text = "\n".join(
        "\n".join([r["requested_rewrite"]["subject"], *r["neighborhood_prompts"]])
        + "\n".join(r["attribute_prompts"])
        for r in records[:250]
    )
    assert all(n in dev_text for n in names)
    test_text = json.dumps(records[250:], ensure_ascii=False).lower()
    assert not [n for n in names if n.lower() in test_text]
    dev = [r["requested_rewrite"]["subject"].strip() for r in records[:250]]
    assert {s for s in dev if s.lower() not in test_text} <= set(names)


def test_nearest_subjects_excludes_the_subject_and_is_deterministic(pool):
    model, tok = make_llama()
    got = nearest_subjects(model, tok, "Eiffel Tower", 4, layer=1)
    assert len(got) == len(set(got)) == 4 and set(got) <= set(POOL)
    assert "Eiffel Tower" not in got
    keep._POOL_CACHE.clear()
    assert nearest_subjects(model, tok, "Eiffel Tower", 4, layer=1) == got  # cold cache too
    assert "Eiffel Tower" not in nearest_subjects(model, tok, "eiffel tower", 99, layer=1)
    assert "Eiffel Tower" not in nearest_subjects(model, tok, "Tower", 99, layer=1)  # contains
    assert nearest_subjects(model, tok, "Paris", 0, layer=1) == []


def test_nearest_subjects_ranks_by_hidden_state_similarity(pool):
    model, tok = make_llama()
    vecs = keep.subject_vectors(model, tok, POOL, layer=1)
    query = keep.subject_vectors(model, tok, ["Paris"], layer=1)[0]
    sims = {name: float(v @ query) for name, v in zip(POOL, vecs, strict=True)}
    got = nearest_subjects(model, tok, "Paris", 3, layer=1)
    rest = [s for s in POOL if s != "Paris" and s not in got]
    assert min(sims[s] for s in got) >= max(sims[s] for s in rest) - 1e-6


def test_pool_vectors_recomputed_after_an_in_place_weight_change(pool):
    model, tok = make_llama()
    first = keep._pool_vectors(model, tok, 1)
    assert keep._pool_vectors(model, tok, 1) is first  # cached while the weights are unchanged
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.5)
    second = keep._pool_vectors(model, tok, 1)
    assert second is not first and not torch.allclose(second, first)
    zero = keep._pool_vectors(model, tok, 0)  # another layer: another key, recomputed
    assert zero is not second
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.5)  # a block above layer 0: not read
    assert keep._pool_vectors(model, tok, 0) is zero  # so layer 0's vectors stay cached
    assert not torch.allclose(keep._pool_vectors(model, tok, 1), second)  # layer 1's do not


def test_kl_texts_use_the_other_subjects_and_fall_back_to_stand_ins():
    pairs = kl_texts([REQ], [["Berlin", "London"]])
    assert pairs == [
        ("Eiffel Tower is a", None),
        ("the Berlin is located in", REQ.target_new),
        ("the London is located in", REQ.target_new),
    ]
    stand_ins = kl_texts([REQ])
    assert [t for t, _ in stand_ins[1:]] == [REQ.prompt.format(s) for s in keep.KL_SUBJECTS]


def test_keep_subjects_hold_back_a_neighbour_and_leave_the_model_unchanged(pool):
    model, tok = make_llama(layers=3)
    snap = params_snapshot(model)
    hp = HP.replace(keep_subjects=3)
    others = keep.keep_others(model, tok, [REQ], hp)[0]
    neighbour = REQ.prompt.format(others[0])
    base = _logp(model, tok, neighbour, REQ.target_new)
    rise = {}
    for kl in (0.0, 20.0):
        res = compute_deltas(model, tok, [REQ], hp.replace(kl_factor=kl))
        assert_params_equal(model, snap)
        with ev.applied(model, res.deltas):
            rise[kl] = _logp(model, tok, neighbour, REQ.target_new) - base
    assert rise[20.0] < rise[0.0]
    again = compute_deltas(model, tok, [REQ], hp.replace(kl_factor=20.0))
    first = compute_deltas(model, tok, [REQ], hp.replace(kl_factor=20.0))
    assert all(torch.equal(again.deltas[k], first.deltas[k]) for k in first.deltas)


def test_negative_keep_subjects_is_refused():
    with pytest.raises(HParamsError, match="keep_subjects must be >= 0"):
        HP.replace(keep_subjects=-1)


@torch.no_grad()
def _logp(model, tok, prompt, target):
    from ftedit.core.ft import encode, target_logprobs

    return float(target_logprobs(model, encode(tok, [prompt], [target], "prompt_last"))[0, 0])


def test_an_edit_keeps_the_pool_cache_valid(pool):
    """compute_deltas writes the trained weights back bit for bit, so the next edit must not
    pay for the pool again, whatever the edit in between trained; a real change to those
    weights still invalidates it."""
    model, tok = make_llama(layers=3)
    hp = HP.replace(kl_factor=1.0, keep_subjects=2, layers=(1,), keep_rank_layer=1)
    compute_deltas(model, tok, [REQ], hp)
    cached = keep._pool_vectors(model, tok, 1)
    compute_deltas(model, tok, [REQ], hp)
    assert keep._pool_vectors(model, tok, 1) is cached
    # An edit that reads no pool (FT-L-like, block 0, under the pool's layer) between two
    # that do: its write-back also leaves the pool valid.
    compute_deltas(model, tok, [REQ], HP.replace(layers=(0,), num_steps=3))
    assert keep._pool_vectors(model, tok, 1) is cached
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    assert keep._pool_vectors(model, tok, 1) is not cached


def test_prefixes_are_generated_once_per_state_of_the_weights(monkeypatch):
    """One edit asks for the training prefixes twice (training texts, subject keys) and an
    evaluation loop edits the same weights again and again: same weights, same texts, one
    generation; any write to a weight generates them anew."""
    from ftedit.core import prefixes

    model, tok = make_llama(layers=3)
    prefixes._CACHE.clear()
    calls = []
    real = prefixes._generate
    monkeypatch.setattr(prefixes, "_generate", lambda *a: calls.append(a) or real(*a))
    first = prefixes.random_prefixes(model, tok, 2, 5, 0)
    assert prefixes.random_prefixes(model, tok, 2, 5, 0) == first and len(calls) == 1
    hp = HP.replace(num_prefixes=2, prefix_len=5, layers=(1,))
    compute_deltas(model, tok, [REQ], hp)  # trains in place, then writes back bit for bit
    assert len(calls) == 1
    assert prefixes.random_prefixes(model, tok, 2, 5, 1) != first and len(calls) == 2  # seed
    w = model.model.layers[2].mlp.up_proj.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(1.5)
    prefixes.random_prefixes(model, tok, 2, 5, 1)
    assert len(calls) == 3
    prefixes._CACHE.clear()
    monkeypatch.setattr(prefixes, "_generate", real)
    with torch.no_grad():
        w.copy_(saved)
    assert prefixes.random_prefixes(model, tok, 2, 5, 0) == first  # uncached: same texts


def test_a_warmed_workspace_edits_without_recomputing_prefixes_or_pool(pool, monkeypatch, tmp_path):
    """Workspace.warm (the app runs it after loading) computes what the next default edit
    reads, for the live weights it will read them from."""
    from ftedit.core import prefixes
    from tests.storekit import REQUESTS, open_ws

    ws = open_ws(tmp_path / "home")
    prefixes._CACHE.clear()
    ws.warm()
    generated, pooled = [], []
    monkeypatch.setattr(prefixes, "_generate", lambda *a: generated.append(a) or ["x."])
    real = keep.subject_vectors
    monkeypatch.setattr(
        keep, "subject_vectors", lambda m, t, s, *a: pooled.append(len(s)) or real(m, t, s, *a)
    )
    info = ws.edit(REQUESTS[0], ws.default_hparams())
    assert generated == [] and len(POOL) not in pooled and pooled  # only the edited subject
    assert info.metrics["neighbours"]  # the pool was used, from the cache
    ws.warm()  # the edit changed the live weights: both are computed anew for the next edit
    assert len(generated) == 1 and pooled[-1] == len(POOL)


def test_ranking_below_the_edited_blocks_outlives_an_applied_edit(pool, monkeypatch):
    """By default the nearest subjects are chosen after the block under the lowest edited one,
    on vectors no edit of those blocks can change, so the pool is read once per model, not
    again after every applied edit (the app's and a sequential run's case); ranked after an
    edited block (keep_rank_layer), the pool must be read again. A block the model lacks, or a negative one, is refused."""
    model, tok = make_llama(layers=3)
    hp = HP.replace(keep_nullspace=True, keep_subjects=2, layers=(1, 2))  # ranked after block 0
    assert keep.keep_others(model, tok, [REQ], hp) == [
        nearest_subjects(model, tok, REQ.subject, 2, layer=0)
    ]
    res = compute_deltas(model, tok, [REQ], hp)
    below = keep._pool_vectors(model, tok, 0)
    calls = []
    real = keep.subject_vectors

    def counted(model, tok, subjects, layer, *rest):
        if tuple(subjects) == POOL:  # the pool's vectors, not the request's own
            calls.append(layer)
        return real(model, tok, subjects, layer, *rest)

    monkeypatch.setattr(keep, "subject_vectors", counted)
    with ev.applied(model, res.deltas):  # the edit now in the weights, as the app holds it
        compute_deltas(model, tok, [REQ], hp)  # the next edit
        assert calls == [] and keep._pool_vectors(model, tok, 0) is below
        compute_deltas(model, tok, [REQ], hp.replace(keep_rank_layer=2))  # an edited block
        assert calls == [2]
    with pytest.raises(HParamsError, match="keep_rank_layer 3: this model has blocks 0-2"):
        compute_deltas(model, tok, [REQ], hp.replace(keep_rank_layer=3))
    with pytest.raises(HParamsError, match="keep_rank_layer must be a block number >= 0"):
        HP.replace(keep_rank_layer=-1)
    assert HP.replace(keep_rank_layer=2.0).keep_rank_layer == 2
