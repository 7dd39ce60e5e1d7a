"""Where an edit's neighbourhood loss enters: for CounterFact neighbour prompts, the change of
the margin log P(true) - log P(new) when the edit's delta acts at one token only (added to the
edited modules' outputs there), against the edit acting everywhere.

    python bench/leak_tokens.py --split dev --n 60 --hparams bench/hparams/dev8/default-tparts.json

Prints, for each neighbour prompt whose margin the edit lowers by more than --min, the tokens
that carry it, then the total per kind of position: the prompt's last token (where the
answer is read), the target's own tokens, the prompt's first tokens (where a neighbour's
subject usually sits) and the others. Diagnostic only: dev records, no result file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftedit import paths
from ftedit.core.evaluate import load_records
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.core.models import load_model
from ftedit.core.requests import EditRequest

DATA = paths.data_dir() / "counterfact-sample.json"


@torch.no_grad()
def target_logprob(model, ids: list[int], n_target: int) -> float:
    x = torch.tensor([ids])
    lp = model(input_ids=x, use_cache=False).logits[0, :-1].log_softmax(-1)
    tgt = x[0, 1:]
    return float(lp[-n_target:].gather(1, tgt[-n_target:, None]).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset")
    ap.add_argument("--hparams")
    ap.add_argument("--split", default="dev", choices=["dev"])
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--min", type=float, default=0.5, help="margin drop to report a prompt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hp = (
        FTHyperParams.from_json(args.hparams)
        if args.hparams
        else load_preset(args.preset or "default")
    )
    lm = load_model()
    model, tok = lm.model, lm.tok
    names = dict(model.named_modules())
    mods = {i: names[hp.rewrite_module_tmp.format(i)] for i in hp.layers}
    mask: list[torch.Tensor | None] = [None]
    delta: dict[int, torch.Tensor] = {}

    def hook(layer):
        def f(module, inp, out):
            if mask[0] is None:
                return out
            return out + (inp[0] @ delta[layer].T) * mask[0][None, : out.shape[1], None]

        return f

    handles = [m.register_forward_hook(hook(i)) for i, m in mods.items()]
    kinds = {"last prompt token": 0.0, "target tokens": 0.0, "first 3 tokens": 0.0, "other": 0.0}
    total_all = 0.0
    total_sum = 0.0
    try:
        for rec in load_records(DATA, args.split, args.n, args.start):
            req = EditRequest.from_counterfact(rec)
            res = compute_deltas(model, tok, [req], hp)
            for i in hp.layers:
                delta[i] = res.deltas[hp.rewrite_module_tmp.format(i) + ".weight"].float()
            rw = rec["requested_rewrite"]
            true, new = " " + rw["target_true"]["str"], " " + rw["target_new"]["str"]
            for p in rec["neighborhood_prompts"]:
                pid = tok(p, add_special_tokens=False)["input_ids"]
                seqs = {}
                for name, t in (("true", true), ("new", new)):
                    tid = tok(t, add_special_tokens=False)["input_ids"]
                    seqs[name] = (pid + tid, len(tid))

                def margin(m, seqs=seqs):
                    """Mean-token log P(true) - log P(new), as scored, with the delta at m."""
                    mask[0] = m
                    try:
                        a = target_logprob(model, *seqs["true"])
                        b = target_logprob(model, *seqs["new"])
                    finally:
                        mask[0] = None
                    return a / seqs["true"][1] - b / seqs["new"][1]

                L = max(len(s) for s, _ in seqs.values())
                base = margin(None)
                full = margin(torch.ones(L))
                drop = base - full
                if drop < args.min:
                    continue
                total_all += drop
                per = []
                for t in range(L):
                    m = torch.zeros(L)
                    if t < len(pid):
                        m[t] = 1
                    else:  # a target position: both targets' tokens from t on
                        m[t:] = 1
                    d = base - margin(m)
                    per.append(d)
                    if t >= len(pid):
                        kinds["target tokens"] += d
                        break
                    if t == len(pid) - 1:
                        kinds["last prompt token"] += d
                    elif t < 3:
                        kinds["first 3 tokens"] += d
                    else:
                        kinds["other"] += d
                total_sum += sum(per)
                toks = [tok.decode([x]) for x in pid] + ["<target>"]
                top = sorted(range(len(per)), key=lambda k: -per[k])[:3]
                flip = "FLIP " if base > 0 >= full else ""
                print(
                    f"{rec['case_id']:>6} {flip}drop {drop:5.2f} {p!r}: "
                    + ", ".join(f"{toks[k]!r} {per[k]:.2f}" for k in top),
                    flush=True,
                )
    finally:
        for h in handles:
            h.remove()
    print(
        f"\nsum of drops (all positions at once): {total_all:.2f}; "
        f"sum of one-position drops: {total_sum:.2f}"
    )
    for k, v in kinds.items():
        print(f"  {k}: {v:.2f} ({100 * v / max(total_sum, 1e-9):.0f} %)")


if __name__ == "__main__":
    main()
