"""Edit-quality evaluation: CounterFact (ROME's Table 4) and zsRE (ROME/MEMIT convention).

Every record is edited from the unedited model: train the edit (``compute_deltas`` is pure),
score it with the deltas applied (:func:`ftedit.core.live.applied`: ``LiveWeights.temporarily``),
which then restores the exact pre-edit bits.

Deviation from ROME, for CPU budgets: generation entropy (ROME's fluency) is computed on the
first ``gen_prompts`` generation prompts of a record with ``gen_tokens`` new tokens (ROME: all
ten prompts, 100 tokens), sampled top-k 5 as ROME's ``generate_fast`` does, words split by a
regex instead of nltk. Shorter texts have lower n-gram entropy, so compare it across methods
here, not with ROME's absolute numbers.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ftedit import paths
from ftedit.core.batch import _chunks, _model_inputs, encode
from ftedit.core.compact import compact
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import FTHyperParams
from ftedit.core.live import applied
from ftedit.core.metrics import counterfact_scores
from ftedit.core.requests import EditRequest

# CounterFact sample records 0-249 are for tuning, 250-499 for reporting (issue 5).
SPLITS = {"dev": (0, 250), "test": (250, 500)}
DATA_DIR = paths.data_dir()
CF_METRICS = (
    "efficacy",
    "paraphrase",
    "neighborhood",
    "efficacy_magnitude",
    "paraphrase_magnitude",
    "neighborhood_magnitude",
    "gen_entropy",
    "seconds",
)
ZSRE_METRICS = ("efficacy", "paraphrase", "neighborhood", "seconds")
Progress = Callable[[int, int, dict], None]  # (records done, total, that record's row)


def load_records(
    path: str | Path, split: str | None = None, n: int | None = None, start: int = 0
) -> list[dict]:
    """Records of a JSON list file, restricted to a CounterFact split, then ``n`` of them from
    the ``start``-th on (default: from the first)."""
    records = json.loads(Path(path).read_text())
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        lo, hi = SPLITS[split]
        records = records[lo:hi]
    if start < 0 or (start and start >= len(records)):
        raise ValueError(f"start must be in 0..{len(records) - 1}, got {start}")
    records = records[start:]
    return records[:n] if n is not None else records


def stop_time(hhmm: str | None, now: float | None = None) -> float | None:
    """The next wall-clock "HH:MM" (local) after ``now`` (default: the present) as a
    ``time.time()`` deadline: today's, or tomorrow's once today's has passed (00:30 given at
    22:20 means in two hours and ten minutes, not at once); None for None."""
    if not hhmm:
        return None
    h, m = map(int, hhmm.split(":"))
    now = time.time() if now is None else now
    day = time.localtime(now)
    at = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, h, m, 0, 0, 0, -1))
    if at <= now:
        day = time.localtime(at + 86400 + 3600)  # a day later; the hour absorbs a DST shift
        at = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, h, m, 0, 0, 0, -1))
    return at


# ---- generation entropy (ROME's fluency) ----------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """ROME's ``compute_n_gram_entropy``: weighted mean of the n-gram entropies (bits)."""
    words = _WORD.findall(text)
    out = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        out.append(h * w)
    return sum(out) / len(out)


@torch.no_grad()
def sample_texts(
    model, tok, prompts: Sequence[str], max_new_tokens: int, seed: int = 0, top_k: int = 5
) -> list[str]:
    """Prompt + a top-k sampled continuation for each prompt (batched, left-padded)."""
    dev = model.get_input_embeddings().weight.device
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True).to(dev)
    finally:
        tok.padding_side = side
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            **enc,
            do_sample=True,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
        )
    return tok.batch_decode(out, skip_special_tokens=True)


def generation_entropy(
    model, tok, prompts: Sequence[str], max_new_tokens: int = 40, seed: int = 0
) -> float:
    texts = sample_texts(model, tok, prompts, max_new_tokens, seed)
    return statistics.fmean(ngram_entropy(t) for t in texts)


# ---- per-record scores ----------------------------------------------------------------------


def score_counterfact(model, tok, record: dict, gen_prompts: int = 2, gen_tokens: int = 40) -> dict:
    """ROME's CounterFact scores of the live model for one record (rates in [0, 1])."""
    row = counterfact_scores(model, tok, record)
    prompts = record.get("generation_prompts", [])[:gen_prompts]
    row["gen_entropy"] = (
        generation_entropy(model, tok, prompts, gen_tokens, seed=record.get("case_id", 0))
        if prompts and gen_tokens
        else float("nan")
    )
    return row


@torch.no_grad()
def token_accuracy(
    model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32
) -> list[float]:
    """Teacher-forced argmax accuracy of each target's tokens after its prompt (MEMIT's zsRE)."""
    dev = model.get_input_embeddings().weight.device
    out = []
    for ps, ts in zip(
        _chunks(list(prompts), batch_size), _chunks(list(targets), batch_size), strict=True
    ):
        b = encode(tok, ps, ts, "target_new", dev)
        logits = model(**_model_inputs(b)).logits
        rows = torch.arange(len(ps), device=dev)[:, None]
        hit = (logits[rows, b.score_pos].argmax(-1) == b.target_ids).float() * b.target_mask
        out += (hit.sum(1) / b.target_mask.sum(1)).tolist()
    return out


def zsre_probes(record: dict) -> dict[str, tuple[str, str]]:
    """MEMIT's zsRE probes of a record, metric -> (prompt, target): answers[0] after src and
    after rephrase, loc_ans after ``loc?``."""
    ans = " " + record["answers"][0].strip()
    return {
        "efficacy": (record["src"], ans),
        "paraphrase": (record["rephrase"], ans),
        "neighborhood": (record["loc"] + "?", " " + record["loc_ans"].strip()),
    }


def score_zsre(model, tok, record: dict) -> dict:
    """MEMIT's zsRE scores: token accuracy of each of :func:`zsre_probes`."""
    probes = zsre_probes(record)
    acc = token_accuracy(model, tok, *zip(*probes.values(), strict=True))
    return dict(zip(probes, acc, strict=True))


# ---- running a method over records ---------------------------------------------------------


def evaluate(
    model,
    tok,
    records: Sequence[dict],
    hparams: FTHyperParams | None,
    dataset: str = "counterfact",
    progress: Progress | None = None,
    gen_records: int | None = None,
    deadline: float | None = None,
    **score_kw,
) -> list[dict]:
    """One row per record: scores after editing that record alone (``hparams=None``: unedited).
    ``gen_records``: generation entropy only on the first that many records (it dominates the
    cost of scoring on a CPU). ``deadline`` (a ``time.time()``): stop before a record that
    would start after it; the rows then cover only the records done."""
    make = EditRequest.from_counterfact if dataset == "counterfact" else EditRequest.from_zsre
    score = score_counterfact if dataset == "counterfact" else score_zsre
    rows = []
    for i, record in enumerate(records):
        if deadline is not None and time.time() > deadline:
            break
        if gen_records is not None and i == gen_records:
            score_kw = {**score_kw, "gen_tokens": 0}
        if hparams is None:
            row, info = score(model, tok, record, **score_kw), {"seconds": 0.0, "steps": 0}
        else:
            res = compute_deltas(model, tok, [make(record)], hparams)
            # Score what an edit stores and applies (hparams.store_as: compact forms).
            with applied(model, compact(res.deltas, hparams.store_as)):
                row = score(model, tok, record, **score_kw)
            info = {"seconds": res.seconds, "steps": res.steps, "final_loss": res.losses[-1]}
        row.update(info, case_id=record.get("case_id", i))
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(records), row)
    return rows


def summarize(rows: Sequence[dict], metrics: Sequence[str] = CF_METRICS) -> dict:
    """Means over records; rates and magnitudes as percentages (ROME's tables), n = records."""
    out: dict = {"n": len(rows)}
    for k in metrics:
        vals = [r[k] for r in rows if k in r and not math.isnan(r[k])]
        if not vals:
            continue
        mean = statistics.fmean(vals)
        out[k] = mean if k in ("gen_entropy", "seconds") else 100 * mean
    return out


# ---- reports --------------------------------------------------------------------------------

LABELS = {
    "efficacy": "Efficacy",
    "paraphrase": "Paraphrase",
    "neighborhood": "Neighborhood",
    "efficacy_magnitude": "Eff. mag.",
    "paraphrase_magnitude": "Para. mag.",
    "neighborhood_magnitude": "Neigh. mag.",
    "gen_entropy": "Gen. entropy",
    "seconds": "s / edit",
}


def markdown_table(summaries: dict[str, dict], metrics: Sequence[str] = CF_METRICS) -> str:
    """One row per method: ``summaries`` maps a method name to :func:`summarize`'s output."""
    cols = [m for m in metrics if any(m in s for s in summaries.values())]
    lines = [
        "| method | n | " + " | ".join(LABELS.get(c, c) for c in cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for name, s in summaries.items():
        cells = [f"{s[c]:.1f}" if c in s else "" for c in cols]
        lines.append(f"| {name} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_chart(
    summaries: dict[str, dict],
    path: str | Path,
    title: str,
    metrics: Sequence[str] = ("efficacy", "paraphrase", "neighborhood"),
) -> Path:
    """Grouped bar chart of the success rates, one group per metric, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    width = 0.8 / max(len(summaries), 1)
    for j, (name, s) in enumerate(summaries.items()):
        xs = [i + j * width for i in range(len(metrics))]
        bars = ax.bar(xs, [s.get(m, 0.0) for m in metrics], width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([i + width * (len(summaries) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels([LABELS.get(m, m) for m in metrics])
    ax.set_ylim(0, 110)
    ax.set_ylabel("success rate (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
