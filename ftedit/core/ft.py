"""Constrained fine-tuning (ROME's FT / FT-L): compute an edit's deltas without keeping them.

Faithful to ``execute_ft`` (see shared/seed): Adam on the chosen layers' parameters only,
a loss on the new target, a clamp to a box of half-width ``norm_constraint`` around the
pre-edit values after every step, an early stop when the epoch's mean loss falls under
``early_stop_loss``, and the result returned as deltas while the model is left bit-identical.

Deliberate differences from the reference loop, none of which changes what is optimised:
tokenisation happens once; logits are computed only where the loss reads them; padding is
handled on either side (explicit position ids, the real last prompt token); the target loss
mask comes from the target's attention mask (ROME masks ``unk`` ids, which lets pad ids into
the loss when targets of different lengths share a batch); parameter names match the
template at dotted boundaries ("h.1" does not match "h.11"). A bfloat16 / float16 model
trains float32 master copies of the edited tensors (Adam, the box and the updates in float32,
the forward in the model's dtype; ftedit/core/precision.py): in float32 nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ftedit.core.batch import (  # noqa: F401  (batch_loss, encode, target_logprobs: re-exported)
    _Batch,
    _chunks,
    _head_is_plain,
    _head_logprobs,
    _nll,
    batch_loss,
    encode,
    final_hidden,
    last_logprobs,
    target_logprobs,
)
from ftedit.core.chat import TRAIN_ASK, chat_prompt, has_template
from ftedit.core.deltas import Deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.keep import _pool_vectors, keep_others, kl_texts, pool_written_back, rank_layer
from ftedit.core.models import blocks_of, input_device, module_device, num_layers, offloaded
from ftedit.core.nullspace import Projector, projector
from ftedit.core.precision import box_bounds, float32_masters, rows_into_box, to_device
from ftedit.core.prefixes import prefixes_written_back, random_prefixes
from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError, RequestError

Callback = Callable[[int, int, float], None]  # (step, num_steps, epoch mean loss)


@dataclass
class EditResult:
    """What training produced: float32 deltas against the weights it started from."""

    deltas: Deltas
    losses: list[float]
    steps: int
    seconds: float
    stopped_early: bool


def weights_to_edit(
    model: torch.nn.Module, hparams: FTHyperParams
) -> dict[str, torch.nn.Parameter]:
    """The parameters FT trains, checked against the model (layers in range, template matches)."""
    n = num_layers(model)
    bad = [i for i in hparams.layers if i >= n]
    if bad:
        raise HParamsError(f"layers {bad} out of range: this model has layers 0..{n - 1}")
    params = dict(model.named_parameters())
    out = {}
    for layer in hparams.layers:
        prefix = hparams.rewrite_module_tmp.format(layer)
        hits = {k: p for k, p in params.items() if _matches(k, prefix) and p.is_floating_point()}
        if not hits:
            example = next((k for k in params if ".0." in k and "mlp" in k), next(iter(params)))
            raise HParamsError(
                f"rewrite_module_tmp {hparams.rewrite_module_tmp!r} matches no parameter for "
                f"layer {layer}; this model's names look like {example!r}"
            )
        away = [k for k in hits if offloaded(model, k)]
        if away:  # refused before anything changes: training would update a discarded copy
            raise HParamsError(
                f"layer {layer} is offloaded ({away[0]} is on meta, CPU offload or disk) and "
                f"cannot be edited; give the model more max_memory so that the edited layers "
                f"sit on a device, or edit fewer / other layers"
            )
        out.update(hits)
    return dict(sorted(out.items()))


def _matches(name: str, prefix: str) -> bool:
    return ("." + name + ".").find("." + prefix + ".") >= 0


def training_texts(model, tok, requests: Sequence[EditRequest], hp: FTHyperParams):
    """The (prompt text, target) pairs trained on: each request, then behind each prefix, then
    (``chat_texts``) asked through the chat template."""
    texts = [r.text for r in requests]
    targets = [r.target_new for r in requests]
    if hp.num_prefixes:
        for p in random_prefixes(model, tok, hp.num_prefixes, hp.prefix_len, hp.seed):
            texts += [f"{p} {r.text}" for r in requests]
            targets += [r.target_new for r in requests]
    if hp.chat_texts:  # the request asked as a chat turn; the answer starts a line: no space
        if not has_template(tok):
            raise HParamsError(
                "chat_texts needs a tokenizer with a chat template; this model has none: "
                "set chat_texts to false"
            )
        texts += [chat_prompt(tok, TRAIN_ASK.format(r.text)) for r in requests]
        targets += [r.target_new.strip() for r in requests]
    return texts, targets


@dataclass
class _KL:
    batch: _Batch
    logp0: torch.Tensor  # [B, V] pre-edit next-token log-probs at each prompt's last token
    guard: torch.Tensor  # [B] first token of the guarded target, -1 where none


@torch.no_grad()
def _kl_reference(model, tok, requests, dev, others=None) -> _KL:
    pairs = kl_texts(requests, others)
    texts = [t for t, _ in pairs]
    batch = encode(tok, texts, [" a"] * len(texts), "prompt_last", dev)  # target unused
    guard = [tok(g, add_special_tokens=False)["input_ids"][0] if g else -1 for _, g in pairs]
    logp0 = last_logprobs(model, final_hidden(model, batch), batch)
    return _KL(batch, logp0, torch.tensor(guard, device=dev))


def _kl_loss(model, runner, kl: _KL) -> torch.Tensor:
    """Keep penalty: mean KL(pre-edit || current) of the next-token distributions on the KL
    prompts, plus, on the stand-in prompts, how far log p(target_new's first token) rose.
    The KL alone barely sees target_new climbing from 0.1% to 5% on a neighbour (a change
    of ~0.05 nats) though that is what flips ROME's neighbourhood test; the log-ratio does."""
    logp = last_logprobs(model, runner.hidden(kl.batch), kl.batch)
    loss = F.kl_div(logp, kl.logp0, log_target=True, reduction="batchmean")
    guard = kl.guard.to(logp.device)
    rows = (guard >= 0).nonzero()[:, 0]
    if len(rows):
        tok = guard[rows]
        rise = logp[rows, tok] - kl.logp0[rows, tok]
        loss = loss + F.relu(rise).mean()
    return loss


_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


def _upper_stack(model, hparams: FTHyperParams):
    """(blocks from the lowest edited one up, final norm), or None when the layout is unknown."""
    blocks = blocks_of(model, hparams.rewrite_module_tmp)
    base = model.base_model
    norm = next(
        (
            getattr(base, n)
            for n in _FINAL_NORMS
            if isinstance(getattr(base, n, None), torch.nn.Module)
        ),
        None,
    )
    if blocks is None or norm is None or not _head_is_plain(model):
        return None
    return blocks[min(hparams.layers) :], norm


class _Runner:
    """Final hidden states for a batch, running only the blocks from the lowest edited one up.

    The blocks below it are frozen, so their output (and the masks and position embeddings
    every block receives) is the same at every step: it is captured once per batch, with a
    forward pre-hook on the lowest edited block, and replayed. The shortcut is used only if
    it reproduces the full forward on that first pass; otherwise (or for a layout this does
    not know) every step runs the full forward, as before.
    """

    def __init__(self, model, hparams: FTHyperParams):
        self.model = model
        self.stack = _upper_stack(model, hparams)
        self._frozen: dict[int, tuple[_Batch, tuple | None]] = {}

    def hidden(self, batch: _Batch) -> torch.Tensor:
        if id(batch) not in self._frozen:
            self._frozen[id(batch)] = (batch, self._capture(batch) if self.stack else None)
        frozen = self._frozen[id(batch)][1]
        if frozen is None:
            return final_hidden(self.model, batch)
        return self._replay(frozen)

    def logprobs(self, batch: _Batch) -> torch.Tensor:
        if self.stack is None:
            return target_logprobs(self.model, batch)
        return _head_logprobs(self.model, self.hidden(batch), batch)

    def _replay(self, frozen: tuple) -> torch.Tensor:
        blocks, norm = self.stack
        (h, *rest), kwargs = frozen
        for block in blocks:  # blocks may sit on different devices (a device_map)
            dev = module_device(block)
            if dev is not None and h.device != dev:
                h, rest, kwargs = to_device(dev, h), to_device(dev, rest), to_device(dev, kwargs)
            out = block(h, *rest, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        dev = module_device(norm)
        return norm(h if dev is None else h.to(dev))

    @torch.no_grad()
    def _capture(self, batch: _Batch) -> tuple | None:
        got = {}

        def grab(module, args, kwargs):
            got["frozen"] = (args, dict(kwargs))

        handle = self.stack[0][0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            full = final_hidden(self.model, batch)
        finally:
            handle.remove()
        frozen = got.get("frozen")
        if frozen is None or not torch.is_tensor(frozen[0][0]):
            return None
        try:
            same = torch.allclose(self._replay(frozen), full, rtol=1e-4, atol=1e-5)
        except Exception:  # noqa: BLE001 - any surprise in a layout means: use the full forward
            same = False
        return frozen if same else None


def _widened(proj: Projector | None, name: str) -> float:
    """The factor the box of tensor ``name`` is widened by (hparams.keep_prior_box)."""
    return 1.0 if proj is None else proj.widen.get(name, 1.0)


@torch.enable_grad()  # callers may sit in no_grad / inference contexts (UI handlers, eval)
def _train(
    model,
    weights: dict,
    copy: dict,
    batches: list[_Batch],
    hp: FTHyperParams,
    callback: Callback | None,
    kl: _KL | None = None,
    proj: Projector | None = None,
) -> tuple[list[float], bool, dict]:
    """ROME's update loop: Adam step while the batch loss is >= the stop loss, clamp after
    every batch, early stop on the epoch's mean loss. Returns (epoch losses, stopped early,
    float32 deltas = trained masters - float32 base)."""
    masters, base = float32_masters(weights, copy)
    shadowed = [k for k in weights if masters[k] is not weights[k]]
    opt = torch.optim.Adam(list(masters.values()), lr=hp.lr, weight_decay=hp.weight_decay)
    if proj is not None:  # null-space projection of each step on the float32 masters, pre-clamp
        proj.attach(opt, list(masters))
    runner = _Runner(model, hp)  # frozen blocks below the lowest edited one run once
    # The box is the same at every step: its bounds are computed once (float32 for a half
    # model), the clamp is in place. Its half-width per tensor: norm_constraint, widened for a
    # stacked edit by keep_prior_box (Projector.widen).
    eps = {
        k: None if hp.norm_constraint is None else hp.norm_constraint * _widened(proj, k)
        for k in masters
    }
    box = {
        k: box_bounds(base[k], eps[k], exact=k in shadowed) for k in masters if eps[k] is not None
    }
    # box_iters: the same box as bounds on the change (masters - base), for the alternations
    dbox = {k: (lo - base[k], hi - base[k]) for k, (lo, hi) in box.items()} if hp.box_iters else {}
    # box_rows: the dim to take a row's peak over (GPT-2's Conv1D stores weights [in, out])
    outs = {}
    if hp.box_rows:
        mods = dict(model.named_modules())
        outs = {k: 0 if hasattr(mods.get(k.rpartition(".")[0]), "nf") else 1 for k in masters}
    losses: list[float] = []
    for step in tqdm(range(hp.num_steps), desc="FT edit", leave=False):
        total, count = 0.0, 0
        for b in batches:
            opt.zero_grad(set_to_none=True)
            loss = _nll(runner.logprobs(b), b)
            value = loss.item()  # the edit's own loss: what early stopping and callers see
            bs = b.input_ids.shape[0]
            total, count = total + value * bs, count + bs
            if value >= hp.early_stop_loss:
                if kl is not None:  # only a step needs it: the penalty costs a forward pass
                    loss = loss + hp.kl_factor * _kl_loss(model, runner, kl)
                loss.backward()
                for k in shadowed:  # the model-dtype weight's gradient drives its master
                    g = weights[k].grad
                    masters[k].grad = None if g is None else g.float()
                    weights[k].grad = None
                opt.step()
            with torch.no_grad():
                # HOOK POINT: a step is backward -> opt.step on the float32 masters -> (here:
                # anything that reshapes the update, e.g. a projection of masters - base) ->
                # clamp the masters to the box -> write the masters into the model's weights.
                for k, (lo, hi) in box.items():
                    if hp.box_iters:  # alternating projections onto the box and the span: the
                        # clamp below leaks less, the rows scale less
                        proj.alternate_(k, masters[k], base[k], *dbox[k], hp.box_iters)
                    if hp.box_rows:  # each output row scaled into the box: stays in its span
                        d = masters[k] - base[k]
                        masters[k].copy_(base[k] + rows_into_box(d, eps[k], outs[k]))
                    masters[k].clamp_(min=lo, max=hi)  # (after box_rows: rounding only)
                for k in shadowed:
                    weights[k].copy_(masters[k])  # the one cast to the model's dtype
        losses.append(total / count)
        if callback is not None:
            callback(step + 1, hp.num_steps, losses[-1])
        if losses[-1] < hp.early_stop_loss:
            break
    if proj is not None and hp.keep_prior_exact:  # the clamps put some of the change back on
        with torch.no_grad():  # the kept keys: off them again, rows into the box
            for k in masters:
                proj.off_final_(k, masters[k], base[k], eps[k], hp.keep_prior_exact)
                if k in box:
                    masters[k].clamp_(*box[k])  # rounding only
            for k in shadowed:
                weights[k].copy_(masters[k])
    deltas = {k: masters[k].detach() - base[k] for k in masters}
    return losses, bool(losses) and losses[-1] < hp.early_stop_loss, deltas


def warm_caches(model, tok, hparams: FTHyperParams) -> None:
    """Compute ahead what an edit with ``hparams`` reads from the live weights and caches per
    state of them (ftedit/core/memo.py): the training prefixes and the keep pool's vectors
    (the keep projection's and the neighbours table's). The app does this while a visitor
    reads the page, so their first edit does not wait for it."""
    if hparams.num_prefixes:
        random_prefixes(model, tok, hparams.num_prefixes, hparams.prefix_len, hparams.seed)
    if blocks_of(model, hparams.rewrite_module_tmp) is not None:
        _pool_vectors(model, tok, rank_layer(hparams), hparams.rewrite_module_tmp)


def compute_deltas(
    model: torch.nn.Module,
    tok,
    requests: Sequence[EditRequest],
    hparams: FTHyperParams,
    callback: Callback | None = None,
    prior: Sequence[EditRequest] = (),
) -> EditResult:
    """Train the edit and return its deltas. Pure: the model is bit-identical afterwards,
    also when this raises or is interrupted (weights and ``requires_grad`` restored in finally).
    ``prior``: the requests of the edits the model already carries (hparams.keep_prior_edits
    keeps the nearest of them)."""
    if not requests:
        raise RequestError("no requests given: pass at least one EditRequest")
    for r in requests:
        r.check_length(tok)
    weights = weights_to_edit(model, hparams)
    t0 = time.perf_counter()
    copy = {k: v.detach().clone() for k, v in weights.items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    dev = input_device(model)
    versions = {v.data_ptr(): v._version for v in weights.values()}
    try:
        model.eval()
        texts, targets = training_texts(model, tok, requests, hparams)
        chunks = zip(
            _chunks(texts, hparams.batch_size), _chunks(targets, hparams.batch_size), strict=True
        )
        batches = [encode(tok, tx, tg, hparams.objective, dev) for tx, tg in chunks]
        for n, p in model.named_parameters():
            p.requires_grad_(n in weights)
        kl = None
        if hparams.kl_factor:
            others = keep_others(model, tok, requests, hparams)
            kl = _kl_reference(model, tok, requests, dev, others)
        proj = None  # null-space projection of each step (ftedit/core/nullspace.py)
        if hparams.nullspace or hparams.keep_nullspace:
            proj = projector(model, tok, hparams, list(weights), requests, prior)
        losses, stopped, trained = _train(
            model, weights, copy, batches, hparams, callback, kl, proj
        )
        deltas = Deltas(trained)
    finally:
        with torch.no_grad():
            for k, v in weights.items():
                v.copy_(copy[k])
                v.grad = None
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
        # The same bits again under new _version counts: what was cached from them holds.
        after = {v.data_ptr(): v._version for v in weights.values()}
        pool_written_back(versions, after)
        prefixes_written_back(versions, after)
    if not deltas.is_finite():
        raise HParamsError("training diverged (non-finite deltas); lower lr or num_steps")
    return EditResult(deltas, losses, len(losses), time.perf_counter() - t0, stopped)
