"""Null-space projection (hparams.nullspace): preserved keys, the statistics cache, purity, clamp."""

from __future__ import annotations

import pytest
import torch

from ftedit.core import nullspace as ns
from ftedit.core.edit_keys import keep_basis
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError
from tests.tiny import assert_params_equal, make_gpt2, make_llama, params_snapshot

TEMPLATES = {"llama": "model.layers.{}.mlp.down_proj", "gpt2": "transformer.h.{}.mlp.c_proj"}
MAKERS = {"llama": make_llama, "gpt2": make_gpt2}
REQ = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")
# Few enough tokens (~30) that the keys leave an exact null space in the 64/128-wide inputs.
CORPUS = ("the capital of France is Paris", "Apple is made by a company", "who plays jazz ?")


@pytest.fixture(autouse=True)
def small_corpus(tmp_path, monkeypatch):
    """A tiny generic corpus, and a private model cache (the statistics files land there)."""
    monkeypatch.setenv("FTEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ns, "_prompts", lambda: CORPUS)
    monkeypatch.setattr(ns, "SAMPLE_SEEDS", ("the",))
    monkeypatch.setattr(ns, "SAMPLES_PER_SEED", 2)
    monkeypatch.setattr(ns, "SAMPLE_TOKENS", 3)
    ns._KEY_MEMO.clear()


@pytest.fixture(params=["llama", "gpt2"])
def arch(request):
    return request.param


def hp(arch: str, **kw) -> FTHyperParams:
    base = dict(layers=(1,), rewrite_module_tmp=TEMPLATES[arch], lr=1e-2, num_steps=8)
    return FTHyperParams(**{**base, **kw})


def _key_moment(model, tok, h: FTHyperParams) -> torch.Tensor:
    return ns.second_moments(model, tok, h, ns._texts(model, tok))[1]


def _weight_delta(res, arch: str) -> torch.Tensor:
    """The edited matrix's delta as [out, in] (GPT-2's Conv1D stores [in, out])."""
    d = res.deltas[TEMPLATES[arch].format(1) + ".weight"].double()
    return d.T if arch == "gpt2" else d


def _leak(D: torch.Tensor, C: torch.Tensor) -> float:
    """How much D moves the outputs on the corpus keys, relative to its size: ||D C|| / ||D|| ||C||."""
    return float((D @ C).norm() / (D.norm() * C.norm()))


def _last_keys(model, tok, h: FTHyperParams, texts: list[str]) -> torch.Tensor:
    """[in, texts]: what each text gives the edited matrix at its last token."""
    from ftedit.core.key_reads import each_key

    keys: list[torch.Tensor] = []
    each_key(model, tok, h, texts, lambda i, k: keys.append(k), None, True)
    return torch.cat(keys).double().T


def test_projection_keeps_outputs_on_preserved_keys(arch):
    model, tok = MAKERS[arch]()
    C = _key_moment(model, tok, hp(arch))
    plain = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=None))
    proj = compute_deltas(model, tok, [REQ], hp(arch, norm_constraint=None, nullspace=1e9))
    assert _leak(_weight_delta(plain, arch), C) > 1e-2  # without it the corpus outputs move
    D = _weight_delta(proj, arch)
    assert D.abs().max() > 1e-3  # the edit still trains, in the directions the corpus leaves
    assert _leak(D, C) < 1e-6
    assert proj.losses[-1] < proj.losses[0]
    for name, d in proj.deltas.items():
        if name.endswith(".bias"):  # a bias would shift every output: its change is dropped
            assert d.abs().max() == 0


def test_soft_projector_is_between_identity_and_null_space():
    e = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    u = torch.eye(3)
    assert torch.allclose(ns.soft_projector(e, u, 0.0), torch.eye(3))
    P = ns.soft_projector(e, u, 4.0)  # mean(e) = 4/3: factors 1, 1/4, 1/10
    assert torch.allclose(torch.diagonal(P), torch.tensor([1.0, 0.25, 0.1]))


def test_pure_and_the_clamp_holds(arch):
    model, tok = MAKERS[arch]()
    snap = params_snapshot(model)
    eps = 1e-3
    res = compute_deltas(
        model, tok, [REQ], hp(arch, layers=(0, 1), norm_constraint=eps, nullspace=10.0)
    )
    assert_params_equal(model, snap)
    assert 0 < res.deltas.max_abs() <= eps + 1e-7


def test_statistics_cached_and_reused(arch, monkeypatch):
    model, tok = MAKERS[arch]()
    h = hp(arch, nullspace=1.0)
    first = ns.eigen_stats(model, tok, h)
    path = ns.cache_path(ns.base_key(model, h), h)
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(ns, "second_moments", lambda *a: pytest.fail("recomputed"))
    again = ns.eigen_stats(model, tok, h)
    assert torch.equal(first[1][0], again[1][0]) and torch.equal(first[1][1], again[1][1])


def test_cache_of_another_base_is_not_used(arch):
    a, tok = MAKERS[arch](seed=0)
    b, _ = MAKERS[arch](seed=1)
    h = hp(arch, nullspace=1.0)
    ka, kb = ns.base_key(a, h), ns.base_key(b, h)
    assert ka != kb
    stats_a = ns.eigen_stats(a, tok, h)
    # A's file put where B's belongs (e.g. copied by hand) is refused and B's recomputed.
    path_b = ns.cache_path(kb, h)
    path_b.write_bytes(ns.cache_path(ka, h).read_bytes())
    stats_b = ns.eigen_stats(b, tok, h)
    e_b = torch.linalg.eigvalsh(_key_moment(b, tok, h)).clamp(min=0)
    assert torch.allclose(stats_b[1][0], e_b, atol=1e-9)
    assert not torch.allclose(stats_a[1][0], e_b, atol=1e-6)
    assert ns._load(path_b, kb) is not None  # now B's own


def test_base_key_ignores_edits_to_the_template_only(arch):
    model, _ = MAKERS[arch]()
    h = hp(arch)
    key = ns.base_key(model, h)
    with torch.no_grad():
        dict(model.named_parameters())[TEMPLATES[arch].format(0) + ".weight"].add_(0.1)
    assert ns.base_key(model, h) == key  # a stack of edits keeps its base's statistics
    with torch.no_grad():
        model.get_input_embeddings().weight[5, 0] += 0.1
    assert ns.base_key(model, h) != key


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_strength_refused(bad):
    with pytest.raises(HParamsError, match="nullspace must be"):
        FTHyperParams(nullspace=bad)


def test_keep_nullspace_keeps_the_keep_prompts_exactly(arch, monkeypatch):
    from ftedit.core import keep
    from ftedit.core.batch import encode, final_hidden, last_logprobs

    monkeypatch.setattr(keep, "_subject_pool", lambda: ("Paris", "Rome", "London", "Tokyo"))
    keep._POOL_CACHE.clear()
    model, tok = MAKERS[arch]()
    h = hp(arch, layers=(0, 1), norm_constraint=None, keep_nullspace=True, keep_subjects=2)
    others = keep.keep_others(model, tok, [REQ], h)
    texts = [t for t, g in keep.kl_texts([REQ], others) if g] + [REQ.text]

    def logp():
        with torch.no_grad():
            b = encode(tok, texts, [" a"] * len(texts), "prompt_last", "cpu")
            return last_logprobs(model, final_hidden(model, b), b)

    before = logp()
    res = compute_deltas(model, tok, [REQ], h)
    from ftedit.core import evaluate as ev

    with ev.applied(model, res.deltas):
        after = logp()
    assert res.deltas.max_abs() > 1e-3
    assert (after[:-1] - before[:-1]).abs().max() < 1e-4  # the keep prompts: as they were
    assert (after[-1] - before[-1]).abs().max() > 1e-2  # the edited prompt moved


def test_keep_subject_keys_keeps_the_pool_subjects_read_alone(arch, monkeypatch):
    """keep_subject_keys: a prompt that starts with one of the nearest pool subjects keeps its
    output at the subject's last token exactly; without the option the same edit moves it."""
    from ftedit.core import evaluate as ev
    from ftedit.core import keep

    pool = ("Paris", "Rome", "London", "Tokyo", "the Louvre")
    monkeypatch.setattr(keep, "_subject_pool", lambda: pool)
    keep._POOL_CACHE.clear()
    model, tok = MAKERS[arch]()
    base = dict(layers=(0, 1), norm_constraint=None, keep_nullspace=True, keep_subjects=1)
    near = keep.nearest_subjects(model, tok, REQ.subject, 3, 1, TEMPLATES[arch])

    def last_logits():
        with torch.no_grad():
            return torch.stack(
                [
                    model(**tok(s, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
                    for s in near
                ]
            )

    before = last_logits()
    moved = {}
    for n in (0, 3):
        res = compute_deltas(model, tok, [REQ], hp(arch, keep_subject_keys=n, **base))
        assert res.deltas.max_abs() > 1e-3
        with ev.applied(model, res.deltas):
            moved[n] = float((last_logits() - before).abs().max())
    assert moved[3] < 1e-4
    assert moved[0] > 1e-3


def test_bad_keep_subject_keys_refused():
    with pytest.raises(HParamsError, match="keep_subject_keys must be >= 0"):
        FTHyperParams(keep_subject_keys=-1)


def test_subject_keys_only_keeps_the_delta_on_the_subject_keys(arch, small_pool):
    """subject_keys_only: the delta's input side lies in the span of the subject's last-token
    keys (so any input orthogonal to them keeps its output) and is orthogonal to the keep
    keys, and the edited prompt still moves; without the option it has other directions."""

    model, tok = MAKERS[arch]()
    base = dict(norm_constraint=None, keep_nullspace=True, keep_subjects=1)
    Q = keep_basis(model, tok, hp(arch, **base), [REQ])
    S = ns.subject_basis(model, tok, hp(arch, **base), [REQ], Q)[1].double()
    assert 1 <= S.shape[1] <= 3
    off = {}
    for only in (False, True):
        D = _weight_delta(
            compute_deltas(model, tok, [REQ], hp(arch, subject_keys_only=only, **base)), arch
        )
        assert D.norm() > 1e-3
        off[only] = float((D - D @ S @ S.T).norm() / D.norm())
        if only:
            assert float((D @ Q[1].double()).norm() / D.norm()) < 1e-4
    assert off[True] < 1e-4
    assert off[False] > 0.5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_box_rows_keeps_the_box_and_the_subject_span(arch, small_pool):
    """box_rows: the box holds (|delta| <= eps everywhere) and, unlike the element-wise clamp,
    the delta stays in the subject's span and off the keep keys; the prompt still moves."""
    model, tok = MAKERS[arch]()
    eps = 2e-3  # tight enough that the element-wise clamp binds
    base = dict(norm_constraint=eps, keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    keys = keep_basis(model, tok, hp(arch, **base), [REQ])
    Q = keys[1].double()
    S = ns.subject_basis(model, tok, hp(arch, **base), [REQ], keys)[1].double()
    off = {}
    for rows, iters in ((False, 0), (False, 10), (True, 0), (True, 3)):  # box_iters: clamp <->
        h = hp(arch, box_rows=rows, box_iters=iters, **base)
        D = _weight_delta(compute_deltas(model, tok, [REQ], h), arch)
        assert D.norm() > 1e-4 and float(D.abs().max()) <= eps * (1 + 1e-6)
        off[rows, iters] = float((D - D @ S @ S.T).norm() / D.norm())
        if rows:
            assert float((D @ Q).norm() / D.norm()) < 1e-4
    assert off[True, 0] < 1e-4 and off[True, 3] < 1e-4
    assert off[False, 0] > 1e-2  # the clamp bound and moved entries off the span
    assert off[False, 10] < off[False, 0] / 2  # alternating first: the final clamp leaks less


def test_box_rows_needs_a_box():
    with pytest.raises(HParamsError, match="box_rows needs a norm_constraint"):
        FTHyperParams(box_rows=True, norm_constraint=None)
    with pytest.raises(HParamsError, match="box_iters must be >= 0"):
        FTHyperParams(box_iters=-1)
    with pytest.raises(HParamsError, match="box_iters alternates the box and a projection"):
        FTHyperParams(box_iters=3)  # no projection to alternate with
    with pytest.raises(HParamsError, match="box_iters alternates the box and a projection"):
        FTHyperParams(box_iters=3, keep_nullspace=True, norm_constraint=None)


def test_subject_contexts_widen_the_subject_span(arch, small_pool):
    """subject_contexts: the subject's key behind each generic context joins the span (the
    rank grows, the plain span stays inside it); more contexts than the file holds, or
    contexts without subject_keys_only, are refused."""
    from ftedit.core import edit_keys

    model, tok = MAKERS[arch]()
    base = dict(keep_nullspace=True, keep_subjects=1, subject_keys_only=True)
    Q = keep_basis(model, tok, hp(arch, **base), [REQ])
    S0 = ns.subject_basis(model, tok, hp(arch, **base), [REQ], Q)[1].double()
    S4 = ns.subject_basis(model, tok, hp(arch, subject_contexts=4, **base), [REQ], Q)[1].double()
    assert S4.shape[1] > S0.shape[1]
    assert float((S0 - S4 @ (S4.T @ S0)).norm()) < 1e-4  # the plain keys are still spanned
    too_many = len(edit_keys.subject_contexts()) + 1
    with pytest.raises(HParamsError, match="contexts: set at most"):
        ns.subject_basis(model, tok, hp(arch, subject_contexts=too_many, **base), [REQ], Q)
    with pytest.raises(HParamsError, match="subject_contexts must be >= 0 and needs"):
        FTHyperParams(subject_contexts=2)


def test_subject_keys_only_needs_keep_nullspace():
    with pytest.raises(HParamsError, match="subject_keys_only needs keep_nullspace"):
        FTHyperParams(subject_keys_only=True)


@pytest.mark.parametrize("transposed", [False, True])
def test_alternations_in_factored_form_match_clamp_then_project(transposed):
    """Projector.alternate_ (the delta kept as d = A S^T between clamp and projection, in
    place) gives what clamping the weights and projecting the delta n times gives."""
    g = torch.Generator().manual_seed(0)
    n_in, n_out = 48, 16
    Q, _ = torch.linalg.qr(torch.randn(n_in, 6, generator=g))
    S = torch.randn(n_in, 3, generator=g)
    S, _ = torch.linalg.qr(S - Q @ (Q.T @ S))
    shape = (n_in, n_out) if transposed else (n_out, n_in)
    old = torch.randn(shape, generator=g)
    p = old + 0.05 * torch.randn(shape, generator=g)
    lo, hi = old - 0.02, old + 0.02
    proj = ns.Projector({"w": (None, Q, transposed)}, {"w": S})
    want = p.clone()
    for _ in range(5):
        want.clamp_(min=lo, max=hi)
        proj.project_("w", want, old)
    got = p.clone()
    proj.alternate_("w", got, old, lo - old, hi - old, 5)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, p)  # it did move


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("kept", [10, 40])  # of 48 inputs: off E itself, or onto the rest
def test_off_final_takes_the_change_off_the_basis_however_wide(transposed, kept):
    """Projector.off_final_ (keep_prior_exact) gives what alternating the box and d - d E E^T
    gives, then the projection and the rows scaled into the box, whether the basis E is narrow
    or covers most inputs (then it projects onto E's complement instead): nothing left on E."""
    g = torch.Generator().manual_seed(1)
    n_in, n_out, eps = 48, 16, 0.02
    E, _ = torch.linalg.qr(torch.randn(n_in, kept, generator=g))
    shape = (n_in, n_out) if transposed else (n_out, n_in)
    old = torch.randn(shape, generator=g)
    p = old + 0.05 * torch.randn(shape, generator=g)

    def off(d):
        return d - E @ (E.T @ d) if transposed else d - (d @ E) @ E.T

    d = p - old
    for _ in range(5):
        d = off(d.clamp(min=-eps, max=eps))
    d = off(d)
    side = 0 if transposed else 1
    want = old + d * (eps / d.abs().amax(dim=side, keepdim=True).clamp(min=eps))
    got = p.clone()
    ns.Projector({"w": (None, E, transposed)}, final={"w": E}).off_final_("w", got, old, eps, 5)
    d = got - old
    assert torch.allclose(got, want, atol=1e-6)
    assert float(d.abs().max()) <= eps + 1e-6  # the box, to the rounding of old + d - old
    on = E.T @ d if transposed else d @ E
    assert float(on.norm()) < 1e-5 * float(d.norm()) and float(d.norm()) > 0.01
