"""How much of a stacked edit's delta lands on the earlier edits' kept keys (dev records only).

    .venv/bin/python bench/prior_leak.py --n 30 --at 10 20 30

Stacks ``--n`` CounterFact dev edits with ``--preset`` (as bench/sequential.py does); for the
edit made after each ``--at`` count it reports, per edited layer, the share of the delta's
squared norm in the span of the earlier edits' keys (keep_prior_edits / keep_prior_answers: the
projection keeps each step's change off that span) and, for comparison, what a random subspace of
the same rank would hold, and the share on the whole keep basis (the keep prompts' keys too).
The element-wise clamp to the box after each projected step is what can put it back there. Then
keep_prior_exact with no alternations: the delta off the whole keep basis once more, its rows scaled
into the box (both exact): the share of the norm that survives and whether the edit still holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sequential import efficacy
from bench.stack_post import dev_stack, post
from ftedit.core.compact import compact
from ftedit.core.deltas import Deltas
from ftedit.core.edit_keys import keep_basis
from ftedit.core.ft import compute_deltas
from ftedit.core.requests import EditRequest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--at", type=int, nargs="+", default=[10, 20, 30])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    records, model, tok, hp, names, live = dev_stack(args.preset, args.n + 1, args.threads)
    done: list[EditRequest] = []
    eps = hp.norm_constraint
    for i, rec in enumerate(records):
        req = EditRequest.from_counterfact(rec)
        res = compute_deltas(model, tok, [req], hp, prior=done)
        if i in args.at:
            q0 = keep_basis(model, tok, hp, [req], ())
            q1 = keep_basis(model, tok, hp, [req], done)
            fixed = {}
            for layer in hp.layers:
                name = hp.rewrite_module_tmp.format(layer) + ".weight"
                d = res.deltas[name].double()
                qp = q1[layer][:, q0[layer].shape[1] :].double()  # earlier edits' directions
                share = float((d @ qp).norm() ** 2 / d.norm() ** 2)
                rand = qp.shape[1] / d.shape[1]
                q = q1[layer].double()
                whole = float((d @ q).norm() ** 2 / d.norm() ** 2)
                e = post(d, q, eps, 0).double()
                fixed[name] = e.float()
                print(
                    f"after {i} edits, layer {layer}: {qp.shape[1]} earlier directions; "
                    f"share of |d|^2 on them {share:.4f} (random subspace {rand:.4f}), on "
                    f"the whole keep basis ({q.shape[1]}) {whole:.4f}; off it, rows scaled: "
                    f"{float(e.norm() / d.norm()):.3f} of |d| kept",
                    flush=True,
                )
            others = {k: v for k, v in res.deltas.items() if k not in fixed}
            for label, delta in (("as trained", res.deltas), ("exact", Deltas(fixed | others))):
                live.deltas[-1] = compact(delta, hp.store_as)
                live.set_active([*range(i), -1], names)
                print(f"  {label}: efficacy of the new edit {efficacy(model, tok, [rec]):.0f}")
            del live.deltas[-1]
        live.deltas[i] = compact(res.deltas, hp.store_as)
        live.set_active(range(i + 1), names)
        done.append(req)


if __name__ == "__main__":
    main()
