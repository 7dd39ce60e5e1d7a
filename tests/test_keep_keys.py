"""The keep basis's extra keys (hparams.keep_subject_parts, keep_subject_siblings,
keep_prior_edits): each added key is left exactly as it was by the delta, and moved without it."""

from __future__ import annotations

import pytest
import torch

from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError
from tests.test_nullspace import MAKERS, REQ, _last_keys, _leak, _weight_delta, hp

# Three earlier edits a stacked edit of REQ is made on, and the settings that keep their keys
EARLIER = [
    EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris"),
    EditRequest("the {} is located in", "Colosseum", "Paris", "Rome"),
    EditRequest("who plays {} ?", "jazz", "Rome", "Paris"),
]
STACKED = dict(
    keep_nullspace=True,
    keep_subjects=1,
    keep_prior_edits=3,
    keep_prior_answers=True,
    subject_keys_only=True,
    keep_prior_exact=20,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, small_pool):
    """A private model cache, and the three-city keep pool (conftest.small_pool)."""
    monkeypatch.setenv("FTEDIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_subject_parts_keeps_the_subjects_first_word(arch):
    """keep_subject_parts: the keys at the subject's tokens before its last ("Eiffel" of "Eiffel
    Tower") join the keep basis, so the delta leaves a prompt that reads only "Eiffel" (another
    subject starting the same way) exactly as it was; without it the delta moves that key."""
    from ftedit.core.edit_keys import subject_parts

    assert subject_parts([REQ]) == ["Eiffel Tower", " Eiffel Tower", "the Eiffel Tower"]
    assert subject_parts([EditRequest("{} is in", "Paris", "Rome", "France")]) == []
    model, tok = MAKERS[arch]()
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    k = _last_keys(model, tok, hp(arch), ["the Eiffel"])  # [in, 1]: at "Eiffel"
    moved = {}
    for parts in (False, True):
        h = hp(arch, keep_subject_parts=parts, **base)
        D = _weight_delta(compute_deltas(model, tok, [REQ], h), arch)
        assert D.norm() > 1e-3
        moved[parts] = _leak(D, k)
    assert moved[True] < 1e-4
    assert moved[False] > 1e-3
    with pytest.raises(HParamsError, match="keep_subject_parts needs keep_nullspace"):
        FTHyperParams(keep_subject_parts=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_subject_siblings_keeps_a_subject_that_ends_otherwise(arch):
    """keep_subject_siblings: the subject with its last token swapped for the model's likeliest
    others ("Eiffel" + something else) joins the keep basis at its last token, so the delta
    leaves those keys exactly as they were; without the field it moves them. One-token
    subjects give no sibling, and the field is validated."""
    from ftedit.core.edit_keys import subject_siblings

    model, tok = MAKERS[arch]()
    sibs = subject_siblings(model, tok, [REQ], 2)
    assert 2 <= len(sibs) <= 6 and len(set(sibs)) == len(sibs)
    assert not any(s.endswith("Eiffel Tower") for s in sibs)
    assert all(("Eiffel" in s) for s in sibs)  # the subject's first tokens, then another one
    paris = EditRequest("{} is in", "Paris", "Rome", "X")  # one token in the tiny vocabulary
    assert subject_siblings(model, tok, [paris], 2) == []
    K = _last_keys(model, tok, hp(arch), sibs)  # [in, siblings]: the siblings' last-token keys
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    moved = {}
    for n in (0, 2):
        D = _weight_delta(
            compute_deltas(model, tok, [REQ], hp(arch, keep_subject_siblings=n, **base)), arch
        )
        assert D.norm() > 1e-3
        moved[n] = _leak(D, K)
    assert moved[2] < 1e-4
    assert moved[0] > 1e-3
    with pytest.raises(HParamsError, match="keep_subject_siblings must be >= 0 and needs"):
        FTHyperParams(keep_subject_siblings=2)
    with pytest.raises(HParamsError, match="keep_subject_siblings must be >= 0 and needs"):
        FTHyperParams(keep_subject_siblings=-1, keep_nullspace=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_edits_leaves_an_earlier_edits_subject_key_alone(arch):
    """keep_prior_edits: an edit stacked on earlier ones (compute_deltas' ``prior``) keeps the
    nearest earlier edits' subject keys, each in its own prompt, so the delta leaves them exactly
    as they were; without the field it moves them. An earlier edit of the same subject is not
    kept (the new fact must move that key), and the field is validated."""
    from ftedit.core.edit_keys import prior_heads

    model, tok = MAKERS[arch]()
    prior = [
        EditRequest("the {} is located in", "Eiffel Tower", "Berlin", "Paris"),  # same subject
        EditRequest("the {} is located in", "Louvre", "Rome", "Paris"),
        EditRequest("who plays {} ?", "jazz", "Rome", "Paris"),
    ]
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    heads = prior_heads(model, tok, hp(arch, keep_prior_edits=5, **base), [REQ], prior)
    assert sorted(heads) == ["the Louvre", "who plays jazz"]
    (one,) = prior_heads(model, tok, hp(arch, keep_prior_edits=1, **base), [REQ], prior)
    assert one in heads
    k = _last_keys(model, tok, hp(arch), [one])  # [in, 1]: the kept earlier edit's subject key
    moved = {}
    for n in (0, 1):
        h = hp(arch, keep_prior_edits=n, **base)
        D = _weight_delta(compute_deltas(model, tok, [REQ], h, prior=prior), arch)
        assert D.norm() > 1e-3
        moved[n] = _leak(D, k)
    assert moved[1] < 1e-4
    assert moved[0] > 1e-3
    for bad in (dict(keep_prior_edits=3), dict(keep_prior_edits=-1, keep_nullspace=True)):
        with pytest.raises(HParamsError, match="keep_prior_edits must be >= 0 and needs"):
            FTHyperParams(**bad)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_answers_leaves_an_earlier_edits_answer_keys_alone(arch):
    """keep_prior_answers: the keys where an earlier edit reads its own answer (its prompt's
    last token, then each target token but the last, teacher-forced) join the keep basis, so
    the delta leaves them exactly as they were; with the subject key alone it moves them."""
    from ftedit.core.key_reads import each_key

    model, tok = MAKERS[arch]()
    earlier = EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris")
    keys: list = []
    pair = [(earlier.text, earlier.target_new)]
    n = each_key(model, tok, hp(arch), pair, lambda i, k: keys.append(k), None)
    K = torch.cat(keys).double().T  # [in, keys]: one edited layer
    prompt, answer = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in pair[0])
    assert answer > 1 and n == prompt + answer - 1  # read teacher-forced
    assert K.shape[1] == answer  # keyed at the prompt's last token, then the target's but its last
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    moved = {}
    for answers in (False, True):
        h = hp(arch, keep_prior_edits=1, keep_prior_answers=answers, **base)
        D = _weight_delta(compute_deltas(model, tok, [REQ], h, prior=[earlier]), arch)
        assert D.norm() > 1e-3
        moved[answers] = _leak(D, K)
    assert moved[True] < 1e-4
    assert moved[False] > 1e-3
    with pytest.raises(HParamsError, match="keep_prior_answers needs keep_prior_edits"):
        FTHyperParams(keep_prior_answers=True, keep_nullspace=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_share_caps_the_directions_earlier_edits_take(arch):
    """keep_prior_share: the earlier edits' keys widen the keep basis by at most that share of
    the input width, their strongest directions first; the basis stays orthonormal, and an
    earlier key already in the keep prompts' span adds nothing."""
    from ftedit.core.edit_keys import _prior_parts, keep_basis

    model, tok = MAKERS[arch]()
    prior = [
        EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris"),
        EditRequest("who plays {} ?", "jazz", "Rome", "Paris"),
    ]
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1)
    (layer,) = hp(arch).layers
    Q0 = keep_basis(model, tok, hp(arch, **base), [REQ])[layer]
    h = hp(arch, keep_prior_edits=2, keep_prior_answers=True, **base)
    full = keep_basis(model, tok, h, [REQ], prior)[layer]
    width = full.shape[0]
    capped = keep_basis(model, tok, h.replace(keep_prior_share=1.5 / width), [REQ], prior)[layer]
    assert full.shape[1] - Q0.shape[1] >= 3  # two subject keys and the answers' keys
    assert capped.shape[1] == Q0.shape[1] + 1
    for Q in (full, capped):
        eye = torch.eye(Q.shape[1])
        assert torch.allclose(Q.T @ Q, eye, atol=1e-4)
    assert _prior_parts(Q0, Q0[:, :2].double() * 3, 0.0, 0.0)[0].shape[1] == 0
    with pytest.raises(HParamsError, match="keep_prior_share must be in"):
        FTHyperParams(keep_prior_share=0.5, keep_nullspace=True)
    with pytest.raises(HParamsError, match="keep_prior_share must be in"):
        FTHyperParams(keep_prior_share=1.0, keep_prior_edits=3, keep_nullspace=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_exact_leaves_earlier_keys_alone_inside_a_tight_box(arch):
    """keep_prior_exact: with a box tight enough that the clamp after each projected step puts
    part of the change back on an earlier edit's keys, the finished delta is taken off them
    again and its rows scaled into the box: the keys are left as they were, the box holds, and
    the edit still moves. Without the field the clamp leaks; with no earlier edit it changes
    nothing."""

    model, tok = MAKERS[arch]()
    earlier = EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris")
    k = _last_keys(model, tok, hp(arch), ["the Louvre"])  # the earlier edit's subject key
    eps = 2e-3
    base = dict(
        norm_constraint=eps, lr=5e-2, keep_nullspace=True, keep_subjects=1, keep_prior_edits=1
    )
    moved, size = {}, {}
    for exact in (0, 20):
        h = hp(arch, keep_prior_exact=exact, **base)
        D = _weight_delta(compute_deltas(model, tok, [REQ], h, prior=[earlier]), arch)
        assert float(D.abs().max()) <= eps * (1 + 1e-5)  # the box holds
        moved[exact], size[exact] = _leak(D, k), float(D.norm())
    assert moved[0] > 1e-4  # the clamp leaks onto the kept key
    assert moved[20] < 1e-6
    assert size[20] > 0.5 * size[0]
    alone = {
        exact: compute_deltas(model, tok, [REQ], hp(arch, keep_prior_exact=exact, **base))
        for exact in (0, 20)
    }
    for name, d in alone[0].deltas.items():
        assert torch.equal(d, alone[20].deltas[name])
    for bad in (dict(keep_prior_exact=20), dict(keep_prior_exact=-1, keep_prior_edits=1)):
        with pytest.raises(HParamsError, match="keep_prior_exact must be >= 0 and needs"):
            FTHyperParams(keep_nullspace=True, **bad)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_earlier_edits_head_key_read_inside_its_question_is_the_one_read_alone(arch):
    """keep_prior_answers reads an earlier edit's subject key inside its question's
    teacher-forced pass when the head's tokens start the question's: the keys are those of the
    two separate reads (the head alone at its last token, the question and answer), column for
    column; a head that is not such a prefix is read alone."""
    from ftedit.core.edit_keys import _answer_passes
    from ftedit.core.key_reads import each_key

    model, tok = MAKERS[arch]()
    prior = [
        EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris"),
        EditRequest("{}, which plays", "jazz", "the violin", "piano"),
        EditRequest("where is {} ?", "the Colosseum", "Berlin", "Rome"),
    ]
    heads = [r.head for r in prior]
    alone, passes = _answer_passes(tok, heads, prior)
    assert sum(len(p) == 3 for p in passes) >= 2 and len(passes) == 3

    def keys(texts, **kw):
        got: list = []
        each_key(model, tok, hp(arch), texts, lambda i, k: got.append(k), None, **kw)
        return torch.cat(got)

    merged = torch.cat([keys(passes), keys(alone, last=True)])
    separate = torch.cat([keys(heads, last=True), keys([p[:2] for p in passes])])
    assert merged.shape == separate.shape
    # same columns, in another order: each merged key has its twin among the separate ones
    dist = torch.cdist(merged.double(), separate.double())
    assert dist.min(dim=1).values.max() < 1e-4 * separate.norm(dim=1).max()
    assert sorted(dist.argmin(dim=1).tolist()) == list(range(len(separate)))
    # "jazz," is one word to these tokenisers (not "jazz" then ","): that head is read alone
    assert alone == ["jazz"]
    assert sorted(len(p) for p in passes) == [2, 3, 3]


def test_prior_parts_on_more_keys_than_inputs_spans_what_the_svd_spans():
    """_prior_parts with more earlier keys than input width (a long stack) takes its directions
    from k k^T: orthonormal, off the keep basis, and the same subspace, strongest first, as the
    SVD of the keys, with the cap and without it."""
    from ftedit.core.edit_keys import _prior_parts

    g = torch.Generator().manual_seed(0)
    width, n, rank = 24, 60, 14
    Q = torch.linalg.qr(torch.randn(width, 3, generator=g, dtype=torch.float64)).Q.float()
    mix = torch.randn(width, rank, generator=g, dtype=torch.float64)
    mix *= torch.logspace(0, -3, rank, dtype=torch.float64)  # a spread of strengths
    k = mix @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    k = torch.cat([k, Q.double() @ torch.randn(3, 9, generator=g, dtype=torch.float64)], dim=1)
    off = k - Q.double() @ (Q.double().T @ k)
    u = torch.linalg.svd(off, full_matrices=False).U
    for share, r in ((0.0, rank), (8 / width, 8)):
        E = _prior_parts(Q, k, share, 0.0)[0].double()
        assert E.shape == (width, r)  # nothing from the keys Q already spans, nor from rounding
        assert torch.allclose(E.T @ E, torch.eye(r, dtype=torch.float64), atol=1e-6)
        assert (Q.double().T @ E).abs().max() < 1e-6
        ref = u[:, :r]
        assert (E @ E.T - ref @ ref.T).norm() < 1e-5
    assert (
        _prior_parts(Q, Q.double().repeat(1, 12), 0.0, 0.0)[0].shape[1] == 0
    )  # 36 keys > 24 inputs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_box_widens_a_stacked_edits_box_by_the_room_its_keys_lost(arch):
    """keep_prior_box: an edit stacked on earlier ones gets its box widened by the ratio of its
    subject keys' share outside its own keep basis to their share outside that and the earlier
    edits' directions (at most the field's value): the delta uses the wider box and no more,
    the earlier edits' keys stay exactly as they were, and an edit with no earlier edit is
    bit-identical. The field is validated."""
    from ftedit.core import nullspace as ns
    from ftedit.core.ft import weights_to_edit

    model, tok = MAKERS[arch]()
    earlier = EARLIER
    k = _last_keys(model, tok, hp(arch), [r.head for r in earlier])  # their subject keys
    eps, cap = 2e-3, 4.0
    base = dict(norm_constraint=eps, lr=5e-2, **STACKED)
    h = hp(arch, keep_prior_box=cap, **base)
    (w,) = ns.projector(
        model, tok, h, list(weights_to_edit(model, h)), [REQ], earlier
    ).widen.values()
    assert 1.05 < w <= cap  # the earlier keys took part of the subject's keys
    peak, moved = {}, {}
    for box in (0.0, cap):
        D = _weight_delta(
            compute_deltas(model, tok, [REQ], h.replace(keep_prior_box=box), prior=earlier), arch
        )
        peak[box], moved[box] = float(D.abs().max()), _leak(D, k)
    assert peak[0.0] <= eps * (1 + 1e-5)
    assert eps * 1.02 < peak[cap] <= w * eps * (1 + 1e-5)  # the wider box, used, and held
    assert moved[cap] < 1e-6 and moved[0.0] < 1e-6  # the kept keys exact either way
    alone = [compute_deltas(model, tok, [REQ], h.replace(keep_prior_box=b)) for b in (0.0, cap)]
    for name, d in alone[0].deltas.items():
        assert torch.equal(d, alone[1].deltas[name])
    for bad in (
        dict(keep_prior_box=0.5),
        dict(keep_prior_box=2.0, keep_prior_edits=0, keep_prior_answers=False),
        dict(keep_prior_box=2.0, subject_keys_only=False),
    ):
        with pytest.raises(HParamsError, match="keep_prior_box must be 0 .off. or >= 1"):
            FTHyperParams(**{**base, "keep_prior_exact": 0, **bad})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_earlier_edits_read_from_the_edited_blocks_up_give_the_keys_of_a_whole_read(
    arch, monkeypatch
):
    """A stacked edit reads the earlier edits' questions from the lowest edited block up, the
    blocks below having run once per batch (key_reads.below_cache): the earlier edits'
    directions are those of whole reads, an added earlier edit re-runs only the batch it
    joins, the first batch kept is checked against the whole read, and a write below the
    edited blocks starts a new cache."""
    from ftedit.core import edit_keys as ek
    from ftedit.core import key_reads
    from ftedit.core.models import blocks_of

    key_reads._BELOW.clear()
    model, tok = MAKERS[arch]()
    h = hp(arch, keep_nullspace=True, keep_subjects=1, keep_prior_edits=10, keep_prior_answers=True)
    prior = [
        EditRequest("the {} is located in", "Louvre", "the city of Rome", "Paris"),
        EditRequest("the {} is located in", "Colosseum", "Paris", "Rome"),
        EditRequest("who plays {} ?", "jazz", "Rome", "Paris"),
        EditRequest("the {} is located in", "Nokia", "the city of Paris", "Rome"),
        EditRequest("who plays {} ?", "London", "Paris", "Rome"),
    ]
    whole = []
    real = key_reads._forward
    monkeypatch.setattr(key_reads, "_forward", lambda *a, **k: whole.append(1) or real(*a, **k))

    def earlier(n: int, cache: bool) -> torch.Tensor:
        monkeypatch.setattr(ek, "BELOW_CACHE", cache)
        whole.clear()
        (E,) = ek.keep_bases(model, tok, h, [REQ], prior[:n])[1].values()
        return E.double()

    for n in (4, 5):
        ref = earlier(n, False)
        got = earlier(n, True)
        assert got.shape == ref.shape
        assert (got @ got.T - ref @ ref.T).norm() < 1e-4  # the same directions
    cache = key_reads.below_cache(model, h)
    assert cache.get("checked") and not cache.get("off")
    batches = [k for k in cache if isinstance(k, tuple)]
    assert len(batches) >= 2
    earlier(5, True)  # nothing added: no batch runs below the edited blocks again
    assert sum(whole) == 1  # the keep prompts' read alone
    earlier(4, True)  # one edit fewer: the batch it sat in is read whole once more
    assert sum(whole) == 2
    assert len([k for k in cache if isinstance(k, tuple)]) == len(batches)  # one dropped
    with torch.no_grad():  # a write below the lowest edited block
        next(blocks_of(model, h.rewrite_module_tmp)[0].parameters()).add_(0.0)
    assert key_reads.below_cache(model, h) is not cache


def test_prior_parts_soft_weights_are_the_inverse_of_the_left_out_keys_moment():
    """_prior_parts with ``soft``: the basis is the one without, and x - U (w U^T x) is
    (I + s R R^T / mean)^-1 x for every x off the keep basis and the kept directions, R the
    keys the share left out there (MEMIT's C^-1 k); nothing is left out without a cap, and
    soft 0 gives no weights."""
    from ftedit.core.edit_keys import _prior_parts

    g = torch.Generator().manual_seed(1)
    width, n, strength = 20, 50, 3.0
    Q = torch.linalg.qr(torch.randn(width, 2, generator=g, dtype=torch.float64)).Q.float()
    mix = torch.randn(width, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 12)
    k = mix @ torch.randn(12, n, generator=g, dtype=torch.float64)
    for keys in (k, k[:, : width // 2]):  # past the Gram switch (n > width) and below it
        share = 5 / width
        E, (U, w) = _prior_parts(Q, keys, share, strength)
        assert torch.equal(E, _prior_parts(Q, keys, share, 0.0)[0])
        B = torch.cat([Q, E], 1).double()
        R = keys - B @ (B.T @ keys)  # the left-out keys
        C = torch.eye(width, dtype=torch.float64) + strength * R @ R.T / (R.norm() ** 2 / width)
        x = torch.randn(width, 4, generator=g, dtype=torch.float64)
        x = x - B @ (B.T @ x)
        got = x - U @ (w[:, None] * (U.T @ x))
        assert torch.allclose(got, torch.linalg.solve(C, x), atol=1e-8)
        assert (B.T @ U).abs().max() < 1e-6 and bool(((w > 0) & (w < 1)).all())
    assert _prior_parts(Q, k, 0.0, strength)[1] is None  # no cap: every key kept exactly
    assert _prior_parts(Q, k, 5 / width, 0.0)[1] is None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_prior_soft_moves_the_earlier_keys_the_cap_leaves_out_less(arch):
    """keep_prior_soft: with a cap that keeps one direction of three earlier edits' keys, the
    stacked delta moves the keys left out less than with the cap alone (they are weighted, not
    free), the kept direction stays exact, and the edit still takes. Soft 0 and an edit with
    nothing to stack on are bit-identical to the field's absence; the field is validated."""
    from ftedit.core.edit_keys import _prior_parts, keep_bases

    model, tok = MAKERS[arch]()
    earlier = EARLIER
    base = dict(norm_constraint=None, **STACKED)
    width = _last_keys(model, tok, hp(arch), ["Paris"]).shape[0]
    h = hp(arch, keep_prior_share=1.5 / width, **base)
    own, kept, soft = keep_bases(model, tok, h, [REQ], earlier)
    assert not soft  # soft off: no weights computed
    (layer,) = own
    (E,) = kept.values()
    assert E.shape[1] == 1
    k = _last_keys(model, tok, hp(arch), [r.head for r in earlier])
    B = torch.cat([own[layer], E], 1).double()
    left = k - B @ (B.T @ k)  # the subject keys' parts the cap leaves out
    assert left.norm() > 0.1 * k.norm()
    moved, kept_moved, deltas = {}, {}, {}
    for s in (0.0, 10.0):
        res = compute_deltas(model, tok, [REQ], h.replace(keep_prior_soft=s), prior=earlier)
        D = _weight_delta(res, arch)
        assert D.norm() > 1e-3
        moved[s], kept_moved[s], deltas[s] = _leak(D, left), _leak(D, E.double()), res.deltas
    assert moved[10.0] < 0.5 * moved[0.0]
    assert kept_moved[10.0] < 1e-4 and kept_moved[0.0] < 1e-4
    plain = compute_deltas(model, tok, [REQ], h, prior=earlier).deltas
    alone = [compute_deltas(model, tok, [REQ], h.replace(keep_prior_soft=s)) for s in (0.0, 10.0)]
    for name, d in plain.items():
        assert torch.equal(d, deltas[0.0][name])
        assert torch.equal(alone[0].deltas[name], alone[1].deltas[name])
    assert _prior_parts(E, E.double(), 0.5, 1.0)[1] is None  # nothing left out: no weights
    for bad in (
        dict(keep_prior_soft=-1.0, keep_prior_share=0.5),
        dict(keep_prior_soft=1.0),  # no cap: nothing is left out to weight
        dict(keep_prior_soft=1.0, keep_prior_share=0.5, subject_keys_only=False),
    ):
        with pytest.raises(HParamsError, match="keep_prior_soft must be >= 0 and needs"):
            FTHyperParams(**{**base, **bad})
