"""Stack CounterFact dev edits with a finished-delta post-processing (keep_prior_exact's, dev).

    .venv/bin/python bench/stack_post.py --alternations 20 --n 25
    .venv/bin/python bench/stack_post.py --alternations -1 --n 25   # as trained

Each edit is trained with ``--preset`` on top of the ones before; from the second on, its delta
is put through ``--alternations`` rounds of the box and the projection off the whole keep basis,
then that projection and each output row scaled into the box (what keep_prior_exact does; -1:
the delta as trained). Every 5 edits: efficacy and paraphrase over the edits so far and the share
of the norm the post-processing kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftedit.core import evaluate as ev
from ftedit.core.compact import compact
from ftedit.core.deltas import Deltas
from ftedit.core.edit_keys import keep_basis
from ftedit.core.ft import compute_deltas, weights_to_edit
from ftedit.core.hparams import load_preset
from ftedit.core.live import LiveWeights
from ftedit.core.metrics import counterfact_scores
from ftedit.core.models import load_model
from ftedit.core.precision import rows_into_box
from ftedit.core.requests import EditRequest


def post(d: torch.Tensor, Q: torch.Tensor, eps: float, n: int) -> torch.Tensor:
    """d [out, in] after ``n`` alternations of the box and the projection off Q [in, r], then
    that projection and its rows scaled into the box."""
    d, Q = d.double(), Q.double()
    for _ in range(n):
        d = d.clamp(-eps, eps)
        d = d - (d @ Q) @ Q.T
    return rows_into_box(d - (d @ Q) @ Q.T, eps, 1).float()


def dev_stack(preset: str, n: int, threads: int):
    """What a dev stacking run starts from: the first ``n`` dev records, the default model, the
    preset, the tensors it edits and the live weights to stack on."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    records = ev.load_records(ev.DATA_DIR / "counterfact-sample.json", "dev", n)
    lm = load_model()
    hp = load_preset(preset)
    return records, lm.model, lm.tok, hp, list(weights_to_edit(lm.model, hp)), LiveWeights(lm.model)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--alternations", type=int, default=20)
    p.add_argument("--n", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    records, model, tok, hp, names, live = dev_stack(args.preset, args.n, args.threads)
    done: list[EditRequest] = []
    kept: list[float] = []
    for i, rec in enumerate(records):
        req = EditRequest.from_counterfact(rec)
        delta = compute_deltas(model, tok, [req], hp, prior=done).deltas
        if args.alternations >= 0 and done:
            Q = keep_basis(model, tok, hp, [req], done)
            new = {}
            for layer in hp.layers:
                name = hp.rewrite_module_tmp.format(layer) + ".weight"
                new[name] = post(delta[name], Q[layer], hp.norm_constraint, args.alternations)
                kept.append(float(new[name].norm() / delta[name].norm()))
            delta = Deltas(new | {k: v for k, v in delta.items() if k not in new})
        live.deltas[i] = compact(delta, hp.store_as)
        live.set_active(range(i + 1), names)
        done.append(req)
        if (i + 1) % 5 == 0:
            sc = [counterfact_scores(model, tok, r) for r in records[: i + 1]]
            eff = 100 * statistics.fmean(s["efficacy"] for s in sc)
            para = 100 * statistics.fmean(s["paraphrase"] for s in sc)
            share = f"{statistics.fmean(kept):.3f}" if kept else "-"
            print(f"{i + 1} edits: efficacy {eff:.1f}, paraphrase {para:.1f}, norm kept {share}")


if __name__ == "__main__":
    main()
