"""Seconds per edit: ``ftedit.core.ft.compute_deltas`` against a plain transcription of ROME's
``execute_ft`` (shared/seed/decipher-execute-ft.md), same request, hparams and model, one process.

    .venv/bin/python bench/speed_ft.py --repeats 3 --out bench/results/speed  (--models tiny|smollm2|all)

The reference loop tokenises every step, runs the full model every step, computes the logits
of every position, and clamps every step with freshly computed bounds, as ``execute_ft`` does.
Its one change: targets are tokenised without special tokens (ROME's GPT-2 tokenizer adds none;
SmolLM2's would add none either, but this keeps it explicit), and for the ``target_new``
objective / KL penalty it does the plain thing the same way (full logits, gather). Both sides
train on the same texts (random prefixes included, generated inside the timed region on both).
Equal quality is checked on the results: final losses and the deltas themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from bench.reports import write_report
from ftedit.core import keep
from ftedit.core.ft import compute_deltas, training_texts
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.keep import keep_others, kl_texts
from ftedit.core.requests import EditRequest

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")


def _chunks(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def _last_logprobs(model, tok, texts):
    """Full forward, full logits; log-softmax of each text's last real position."""
    inputs = tok(texts, return_tensors="pt", padding=True)
    last = inputs["attention_mask"].sum(dim=1) - 1
    logits = model(**inputs).logits
    return F.log_softmax(logits[torch.arange(len(texts)), last], dim=-1)


def _loss(model, tok, txt, tgt, objective):
    if objective == "prompt_last":  # execute_ft's loss, line by line
        probs = _last_logprobs(model, tok, txt)
        target_ids = tok(tgt, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = target_ids["input_ids"], target_ids["attention_mask"]
        return (-(torch.gather(probs, 1, ids) * mask).sum(1) / mask.sum(1)).mean()
    # teacher forcing, the plain way: prompt + target as one right-padded string, full logits
    n_p = [len(tok(p)["input_ids"]) for p in txt]
    inputs = tok(
        [p + t for p, t in zip(txt, tgt, strict=True)],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )
    logp = F.log_softmax(model(**inputs).logits, dim=-1)
    losses = []
    for i, n in enumerate(n_p):
        end = int(inputs["attention_mask"][i].sum())
        ids = inputs["input_ids"][i, n:end]
        losses.append(-logp[i, n - 1 : end - 1].gather(1, ids[:, None]).mean())
    return torch.stack(losses).mean()


def reference_ft(model, tok, request: EditRequest, hp: FTHyperParams):
    """ROME's execute_ft, transcribed; returns (deltas, losses). Leaves the model unchanged."""
    weights = {
        n: p
        for n, p in model.named_parameters()
        for layer in hp.layers
        if f"{hp.rewrite_module_tmp.format(layer)}." in n
    }
    weights_copy = {k: v.detach().clone() for k, v in weights.items()}
    texts, targets = training_texts(model, tok, [request], hp)
    kl_pairs = kl_texts([request], keep_others(model, tok, [request], hp)) if hp.kl_factor else []
    kl_prompts = [t for t, _ in kl_pairs]
    guards = [
        (i, tok(g, add_special_tokens=False)["input_ids"][0])
        for i, (_, g) in enumerate(kl_pairs)
        if g
    ]
    with torch.no_grad():
        kl_ref = _last_logprobs(model, tok, kl_prompts) if kl_prompts else None
    flags = {n: w.requires_grad for n, w in model.named_parameters()}
    for name, w in model.named_parameters():
        w.requires_grad = name in weights
    opt = torch.optim.Adam(list(weights.values()), lr=hp.lr, weight_decay=hp.weight_decay)
    losses = []
    try:
        for _ in range(hp.num_steps):
            total, count = 0.0, 0
            for txt, tgt in zip(
                _chunks(texts, hp.batch_size), _chunks(targets, hp.batch_size), strict=True
            ):
                opt.zero_grad()
                loss = _loss(model, tok, txt, tgt, hp.objective)
                value = loss.item()
                total, count = total + value * len(txt), count + len(txt)
                if kl_ref is not None:
                    cur = _last_logprobs(model, tok, kl_prompts)
                    kl = F.kl_div(cur, kl_ref, log_target=True, reduction="batchmean")
                    if guards:
                        rise = [cur[i, t] - kl_ref[i, t] for i, t in guards]
                        kl = kl + F.relu(torch.stack(rise)).mean()
                    loss = loss + hp.kl_factor * kl
                if value >= hp.early_stop_loss:
                    loss.backward()
                    opt.step()
                if type(hp.norm_constraint) is float:
                    eps = hp.norm_constraint
                    with torch.no_grad():
                        for k, v in weights.items():
                            v[...] = torch.clamp(
                                v, min=weights_copy[k] - eps, max=weights_copy[k] + eps
                            )
            losses.append(total / count)
            if losses[-1] < hp.early_stop_loss:
                break
        deltas = {k: (weights[k] - weights_copy[k]).detach().clone() for k in weights}
    finally:
        with torch.no_grad():
            for k, v in weights.items():
                v[...] = weights_copy[k]
        for n, w in model.named_parameters():
            w.requires_grad = flags[n]
    return deltas, losses


def tiny_gpt2():
    """A GPT-2-shaped model small enough that per-step overheads dominate (tests' tokenizer)."""
    from tests.tiny import make_gpt2

    return make_gpt2(seed=0, layers=6, width=64, positions=128)


def _agreement(a, b) -> tuple[float, float]:
    """(||a - b|| / ||b||, cosine(a, b)) over all tensors, summed in float64 (float32 norms of
    million-element tensors are off by ~1e-3 on CPU)."""
    dot = na = nb = dd = 0.0
    for k in b:
        x, y = a[k].double(), b[k].double()
        dot, na, nb = (
            dot + float((x * y).sum()),
            na + float((x * x).sum()),
            nb + float((y * y).sum()),
        )
        dd += float(((x - y) ** 2).sum())
    return (dd / nb) ** 0.5 if nb else 0.0, dot / (na * nb) ** 0.5 if na and nb else 0.0


def compare(model, tok, request, hp, repeats: int) -> dict:
    """Median seconds of each side (interleaved, so load on a shared machine hits both alike)."""
    ours_t, ref_t = [], []
    for _ in range(repeats):
        # Both sides pick the keep penalty's subjects from a cold pool, as a fresh process does
        # (the reference's in-place restore would otherwise leave it to ours alone).
        keep._POOL_CACHE.clear()
        t = time.perf_counter()
        ours = compute_deltas(model, tok, [request], hp)
        ours_t.append(time.perf_counter() - t)
        keep._POOL_CACHE.clear()
        t = time.perf_counter()
        ref_deltas, ref_losses = reference_ft(model, tok, request, hp)
        ref_t.append(time.perf_counter() - t)
    diff = max(float((ours.deltas[k] - ref_deltas[k].float()).abs().max()) for k in ref_deltas)
    scale = max(float(v.abs().max()) for v in ref_deltas.values())
    # Adam divides by sqrt(v): an element whose gradient is float noise still moves by ~lr per
    # step, in a noise-decided direction, so max |diff| can reach a few lr while the deltas
    # agree as a whole; the relative Frobenius difference and the cosine show that.
    rel, cos = _agreement(ours.deltas, ref_deltas)
    return {
        "ours_s": statistics.median(ours_t),
        "reference_s": statistics.median(ref_t),
        "speedup": statistics.median(ref_t) / statistics.median(ours_t),
        "steps": [ours.steps, len(ref_losses)],
        "final_loss": [ours.losses[-1], ref_losses[-1]],
        "max_abs_delta_diff": diff,
        "max_abs_delta": scale,
        "rel_fro_diff": rel,
        "cosine": cos,
        "same_tensors": sorted(ours.deltas) == sorted(ref_deltas),
    }


def cases(args):
    from ftedit.core.models import load_model

    if args.models in ("all", "smollm2"):
        lm = load_model(dtype=args.dtype)
        for preset in ("smollm2-ft-l", "fast", "default"):
            yield "SmolLM2-135M", preset, lm.model, lm.tok, REQUEST, load_preset(preset)
        # Not a preset: shows how the saving grows with the number of frozen blocks below.
        upper = load_preset("fast").replace(layers=(24, 25, 26, 27))
        yield "SmolLM2-135M", "fast, layers 24-27", lm.model, lm.tok, REQUEST, upper
    if args.models not in ("all", "tiny"):
        return
    model, tok = tiny_gpt2()
    req = EditRequest("the {} is located in", "Eiffel Tower", "Rome", "Paris")
    tmpl = "transformer.h.{}.mlp.c_proj"
    ftl = FTHyperParams(
        layers=(0,), rewrite_module_tmp=tmpl, lr=5e-4, num_steps=25, norm_constraint=5e-4
    )
    yield "tiny GPT-2 (6x64)", "ft-l", model, tok, req, ftl
    for preset in ("fast", "default"):  # the preset's settings on blocks 2-3, all 25 steps
        hp = load_preset(preset).replace(layers=(2, 3), rewrite_module_tmp=tmpl)
        yield "tiny GPT-2 (6x64)", f"{preset}-like", model, tok, req, hp.replace(early_stop_loss=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    p.add_argument("--models", choices=["all", "smollm2", "tiny"], default="all")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="SmolLM2 weights dtype",
    )
    p.add_argument("--out", default=None, help="folder for speed.md / speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = []
    for model_name, preset, model, tok, req, hp in cases(args):
        r = {"model": model_name, "preset": preset, **compare(model, tok, req, hp, args.repeats)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    header = (
        "| model | hparams | ours (s) | reference (s) | speed-up | steps ours/ref | "
        "final loss ours/ref | deltas: rel. diff, cosine | max abs diff (max abs delta) |"
    )
    table = [header, "|---" * 9 + "|"]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['preset']} | {r['ours_s']:.2f} | {r['reference_s']:.2f} | "
            f"{r['speedup']:.1f}x | {r['steps'][0]}/{r['steps'][1]} | "
            f"{r['final_loss'][0]:.4g}/{r['final_loss'][1]:.4g} | "
            f"{r['rel_fro_diff']:.1e}, {r['cosine']:.7f} | "
            f"{r['max_abs_delta_diff']:.1e} ({r['max_abs_delta']:.1e}) |"
        )
    text = (
        f"Median seconds per edit over {args.repeats} interleaved runs, "
        f"{args.threads} torch thread(s), CPU.\n\n" + "\n".join(table) + "\n"
    )
    print(text)
    write_report(args.out, f"speed-{args.models}", text, rows)


if __name__ == "__main__":
    main()
