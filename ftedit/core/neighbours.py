"""Did anything else change? The edit's relation prompt filled with other subjects, before/after.

An edit of "The Eiffel Tower is located in the city of → Rome" should leave "The Louvre is
located in the city of" alone. :func:`measure` reads, for each neighbouring subject (the keep
pool's nearest by hidden state, :func:`ftedit.core.keep.nearest_subjects`, or subjects the user
lists), the greedy answer, P(its reference answer) and P(the edit's new target); run it before
the edit, then :func:`compare` after it gives the rows stored in the edit's metrics under
``"neighbours"``. The reference answer is the neighbour's known true answer when given
(``"Louvre: Paris"``), else the first word of its answer before the edit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftedit.errors import HParamsError

if TYPE_CHECKING:  # torch is imported where weights are read: `ftedit show` stays torch-free
    from ftedit.core.hparams import FTHyperParams
    from ftedit.core.requests import EditRequest

DEFAULT_K = 10  # neighbours per edit (split between the requests of a multi-fact edit)
ANSWER_TOKENS = 6


def parse_subjects(text: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """(subject, known answer or None) from "Louvre: Paris, Big Ben" or a list of such items
    (one per line or comma-separated); blanks are dropped, duplicates kept once."""
    items = text if isinstance(text, (list, tuple)) else re.split(r"[,\n;]", text or "")
    out: dict[str, str | None] = {}
    for item in items:
        name, _, answer = str(item).partition(":")
        if name.strip():
            out.setdefault(name.strip(), answer.strip() or None)
    return list(out.items())


def first_word(text: str) -> str:
    words = text.split()
    return words[0].strip(".,;:!?\"'()") if words else ""


def greedy_answers(model, tok, prompts: Sequence[str], max_new_tokens: int = ANSWER_TOKENS):
    """Greedy continuations of several prompts in one left-padded batch."""
    import torch

    from ftedit.core.batch import _chunks

    dev = model.get_input_embeddings().weight.device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    for chunk in _chunks(list(prompts), 16):
        enc = [tok(p)["input_ids"] for p in chunk]
        L = max(map(len, enc))
        ids = torch.tensor([[pad] * (L - len(x)) + x for x in enc], device=dev)
        mask = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in enc], device=dev)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        out += tok.batch_decode(gen[:, L:], skip_special_tokens=True)
    return out


def pick(
    model,
    tok,
    requests: Sequence[EditRequest],
    hp: FTHyperParams,
    subjects: str | Sequence[str] | None = None,
    k: int = DEFAULT_K,
) -> list[dict]:
    """The neighbour probes of an edit: {prompt, subject, reference, target_new} for the listed
    subjects, else each request's nearest keep-pool subjects (k split between requests)."""
    from ftedit.core.keep import nearest_subjects, rank_layer

    listed = parse_subjects(subjects)
    probes = []
    per = max(1, k // max(1, len(requests)))
    for r in requests:
        if listed:
            chosen = [(s, a) for s, a in listed if s.lower() != r.subject.lower()]
        else:
            try:
                near = nearest_subjects(
                    model, tok, r.subject, per, rank_layer(hp), hp.rewrite_module_tmp
                )
            except HParamsError:  # a template that indexes no block list: no pool to read
                near = []
            chosen = [(s, None) for s in near]
        probes += [
            {"prompt": r.prompt.format(s), "subject": s, "reference": a, "target_new": r.target_new}
            for s, a in chosen
        ]
    return probes


def measure(model, tok, probes: Sequence[dict]) -> list[dict]:
    """Each probe's greedy answer, P(reference) and P(target_new) on the live weights (the
    reference defaults to the answer's first word, so run this on the unedited stack first)."""
    from ftedit.core.metrics import target_nll

    if not probes:
        return []
    answers = greedy_answers(model, tok, [p["prompt"] for p in probes])
    rows = []
    for p, a in zip(probes, answers, strict=True):
        ref = p.get("reference") or first_word(a) or None
        rows.append({**p, "reference": ref, "answer": a.strip()})
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    targets = [" " + t.strip() for r in rows for t in (r["reference"] or "?", r["target_new"])]
    nll = target_nll(model, tok, prompts, targets)
    for i, r in enumerate(rows):
        r["p_reference"] = math.exp(-nll[2 * i][0]) if r["reference"] else None
        r["p_new"] = math.exp(-nll[2 * i + 1][0])
    return rows


def compare(before: Sequence[dict], after: Sequence[dict]) -> list[dict]:
    """The stored rows: prompt, greedy answer before / after, ``changed`` (its first word
    differs), P(reference) and P(the edit's new target) before / after."""
    out = []
    for b, a in zip(before, after, strict=True):
        changed = first_word(b["answer"]).lower() != first_word(a["answer"]).lower()
        out.append(
            {
                "prompt": b["prompt"],
                "subject": b["subject"],
                "reference": b["reference"],
                "before": b["answer"],
                "after": a["answer"],
                "changed": changed,
                "p_reference_before": b["p_reference"],
                "p_reference_after": a["p_reference"],
                "p_new_before": b["p_new"],
                "p_new_after": a["p_new"],
            }
        )
    return out


def summary(rows: Sequence[dict]) -> str:
    """One line: "kept 9 of 10 neighbouring facts" (and which changed)."""
    if not rows:
        return "no neighbouring facts were checked"
    changed = [r["subject"] for r in rows if r["changed"]]
    line = f"kept {len(rows) - len(changed)} of {len(rows)} neighbouring facts"
    return line + (f" (changed: {', '.join(changed)})" if changed else "")
