"""Tables, charts and text the app shows, built from Workspace values (no gradio, no model)."""

from __future__ import annotations

import json

import pandas as pd

from ftedit.core.requests import EditRequest

HISTORY_COLUMNS = ["id", "fact", "status", "created (UTC)", "seconds", "steps", "efficacy"]
EVENT_COLUMNS = ["version", "edit", "kind", "time (UTC)", "note"]
BEFORE_AFTER_COLUMNS = ["", "before", "after"]
SCORE_COLUMNS = [
    "context",
    "P(new) before",
    "P(new) after",
    "P(rival) before",
    "P(rival) after",
    "new wins",
]
BEHAVIOUR_COLUMNS = [
    "edit",
    "prompt",
    "target_new",
    "target_true",
    "P(new) under A",
    "P(new) under B",
    "P(true) under A",
    "P(true) under B",
]


def fact(request: EditRequest) -> str:
    """One line: ``The Eiffel Tower is located in → Rome (was Paris)``."""
    was = f" (was{request.target_true})" if request.target_true else ""
    return f"{request.text} →{request.target_new}{was}"


def first_word(text: str) -> str:
    words = text.split()
    return " " + words[0].strip(".,;:!?\"'") if words else ""


def rival_target(request: EditRequest, before: dict) -> str | None:
    """What the new target must beat: the true target, else the model's own first answer word
    before the edit (None when that already was the new target)."""
    if request.target_true:
        return request.target_true
    rival = first_word(before.get("completion", ""))
    return rival if rival.strip() and rival.strip() != request.target_new.strip() else None


def succeeded(request: EditRequest, report: dict) -> bool:
    """ROME's efficacy on one report: the new target beats the true one; without a true target,
    the greedy answer starts with the new target."""
    if report.get("p_target_true") is not None:
        return report["p_target_new"] > report["p_target_true"]
    return report.get("completion", "").strip().startswith(request.target_new.strip())


def efficacy(info) -> str:
    """ "1/1"-style count of the edit's requests that succeeded right after it was made."""
    after = info.metrics.get("after") or []
    if not after:
        return "n/a"
    wins = sum(succeeded(r, m) for r, m in zip(info.requests, after, strict=False))
    return f"{wins}/{len(after)}"


def visibility(edit) -> str:
    """On a shared deployment: "private" (only its visitor sees it) or "published"."""
    return "published" if edit.owner is None else "private"


def history_frame(edits, branches: bool | None = None) -> pd.DataFrame:
    """Newest first; on a shared deployment (``branches``, default: ftedit.deploy.visitors.shared())
    a last column says whether each edit is private or published."""
    if branches is None:
        from ftedit.deploy.visitors import shared

        branches = shared()
    rows = [
        [
            e.id,
            fact(e.request) + (f" (+{len(e.requests) - 1} more)" if len(e.requests) > 1 else ""),
            e.status,
            f"{e.created_at:%Y-%m-%d %H:%M:%S}",
            round(e.seconds, 2),
            e.steps,
            efficacy(e),
        ]
        + ([visibility(e)] if branches else [])
        for e in reversed(edits)
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS + (["visibility"] if branches else []))


def events_frame(events) -> pd.DataFrame:
    rows = [
        [f"v{e.id}", e.edit_id, e.kind, f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.note or ""]
        for e in reversed(events)
    ]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def loss_frame(losses) -> pd.DataFrame:
    # Steps as text: the chart then has one tick per step (1, 2, 3), in row order, where a
    # numeric axis would label 1.0, 1.2, 1.4 ...
    # (an empty frame too: the chart keeps the axis type of the first frame it is sent).
    steps = pd.Series([str(i) for i in range(1, len(losses) + 1)], dtype="string")
    return pd.DataFrame({"step": steps, "loss": pd.Series([float(x) for x in losses], dtype=float)})


def _line(text: str) -> str:
    """The first line of a completion, for one-line display."""
    return (text.strip().splitlines() or [""])[0][:80]


def _p(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def before_after_frame(before: dict, after: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            ["greedy completion", before["completion"], after["completion"]],
            ["P(target_new)", _p(before["p_target_new"]), _p(after["p_target_new"])],
            ["P(target_true)", _p(before.get("p_target_true")), _p(after.get("p_target_true"))],
        ],
        columns=BEFORE_AFTER_COLUMNS,
    )


def edit_summary(info, rival: str | None, scores: list[dict]) -> str:
    """Markdown headline of a finished edit."""
    after = info.metrics["after"][0]
    para = scores[1:]
    hits = sum(s["success_after"] for s in para)
    vs = f" vs{rival}" if rival else ""
    # The efficacy is the one History shows for this edit (efficacy(info)); the paraphrase
    # count is a separate figure, so the two tabs never disagree on "efficacy".
    return (
        f"### Edit #{info.id}: {fact(info.request)}\n"
        f"Now answers **{_line(after['completion'])}** · {info.steps} steps in "
        f"{info.seconds:.1f} s · efficacy **{efficacy(info)}** · paraphrases{vs}: "
        f"**{hits}/{len(para)}**"
    )


NEIGHBOUR_COLUMNS = ["neighbour prompt", "before", "after", "P(answer) before", "P(answer) after"]


def neighbours_md(rows) -> str:
    """The "did anything else change?" headline: kept N of M, and the flagged ones."""
    from ftedit.core.neighbours import summary

    if not rows:
        return ""
    return f"**Did anything else change?** {summary(rows)}"


def neighbours_frame(rows) -> pd.DataFrame:
    """One row per neighbour: its answer before / after (flagged ⚠ where the first word
    changed) and P(its reference answer) before / after."""
    return pd.DataFrame(
        [
            [
                r["prompt"],
                _line(r["before"]),
                ("⚠ " if r["changed"] else "") + _line(r["after"]),
                _p(r.get("p_reference_before")),
                _p(r.get("p_reference_after")),
            ]
            for r in rows or []
        ],
        columns=NEIGHBOUR_COLUMNS,
    )


def chat_md(question: str, before: str | None, after: str | None) -> str:
    """The Edit tab's chat answer before and after the edit."""
    if not question:
        return ""
    return (
        f"**Asked as a question:** {question}\n\n- before: {_line(before or '')}\n"
        f"- after: **{_line(after or '')}**"
    )


def facts_md(infos) -> str:
    """Summary table of a several-facts run: one line per edit."""
    from ftedit.core.neighbours import summary

    lines = ["| edit | facts | efficacy | now answers | neighbours |", "|---|---|---|---|---|"]
    for info in infos:
        answers = "; ".join(_line(a["completion"]) for a in info.metrics["after"])
        lines.append(
            f"| #{info.id} | {len(info.requests)} | {efficacy(info)} | {answers} | "
            f"{summary(info.metrics.get('neighbours') or [])} |"
        )
    return "\n".join(lines)


def scores_frame(scores: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [
                s["context"],
                _p(s["p_new_before"]),
                _p(s["p_new_after"]),
                _p(s["p_rival_before"]),
                _p(s["p_rival_after"]),
                "yes" if s["success_after"] else "no",
            ]
            for s in scores
        ],
        columns=SCORE_COLUMNS,
    )


def details_md(info) -> str:
    reqs = "\n".join(
        f"- `{r.prompt}` · subject **{r.subject}** · new **{r.target_new.strip()}**"
        + (f" · true **{r.target_true.strip()}**" if r.target_true else "")
        for r in info.requests
    )
    before, after = info.metrics.get("before") or [], info.metrics.get("after") or []
    answers = "\n".join(
        f"- before: `{_line(b['completion'])}` → "
        f"after: `{_line(a['completion'])}` "
        f"(P(new) {_p(b['p_target_new'])} → {_p(a['p_target_new'])})"
        for b, a in zip(before, after, strict=False)
    )
    return (
        f"### Edit #{info.id} · {info.status} · {info.origin}\n{reqs}\n\n{answers}\n\n"
        + (
            f"{neighbours_md(info.metrics['neighbours'])}\n\n"
            if info.metrics.get("neighbours")
            else ""
        )
        + f"{info.method}, objective `{info.objective}`, {info.steps} steps, "
        f"{info.seconds:.1f} s, {len(info.tensor_names)} tensors, "
        f"blob `{info.blob_sha256[:12]}…`, made {info.created_at:%Y-%m-%d %H:%M:%S} UTC"
    )


def hparams_json(info) -> str:
    return json.dumps(info.hparams_dict(), indent=1)


def compare_md(d: dict) -> str:
    def side(s):
        return (
            f"edit #{s['ref']}"
            if s["kind"] == "edit"
            else f"version {s['ref']} (active edits: {', '.join(map(str, s['edits'])) or 'none'})"
        )

    n = d["norm"]
    return (
        f"**A** = {side(d['a'])} · **B** = {side(d['b'])}\n\n"
        f"cosine(A, B) = **{d['cosine']:.4f}** · ‖A‖ = {n['a']:.4g} · ‖B‖ = {n['b']:.4g} · "
        f"‖A − B‖ = {n['a_minus_b']:.4g} · shared tensors: {len(d['shared_tensors'])}, "
        f"only A: {len(d['only_a'])}, only B: {len(d['only_b'])}"
    )


def norms_frame(d: dict) -> pd.DataFrame:
    """Per-layer delta norms of both sides, in layer order (the chart keeps the row order).
    One bar per layer and side ("20 A", "20 B"): bars sharing an x would be stacked."""
    rows = sorted(
        (int(layer), side.upper(), norm)
        for side in ("a", "b")
        for layer, norm in d["layer_norms"][side].items()
    )
    return pd.DataFrame(
        [[f"{layer} {side}", str(layer), norm, side] for layer, side, norm in rows],
        columns=["bar", "layer", "delta norm", "side"],
    )


def behaviour_frame(d: dict) -> pd.DataFrame:
    rows = [
        [
            b["edit"],
            b["prompt"],
            b["target_new"],
            b["target_true"] or "",
            _p(b["a"]["p_target_new"]),
            _p(b["b"]["p_target_new"]),
            _p(b["a"]["p_target_true"]),
            _p(b["b"]["p_target_true"]),
        ]
        for b in d["behaviour"]
    ]
    return pd.DataFrame(rows, columns=BEHAVIOUR_COLUMNS)
