"""The CLI's many-facts edit (``ftedit edit --file``) and its neighbour lines (kept out of
cli.py so that file stays a table of commands)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from ftedit.core import neighbours as nb


def neighbour_lines(rows: Sequence[dict]) -> list[str]:
    """``show`` / ``edit``: the summary, then one line per neighbour (changed ones flagged)."""
    if not rows:
        return []
    out = [f"  neighbours: {nb.summary(rows)}"]
    for r in rows:
        p = r.get("p_reference_before"), r.get("p_reference_after")
        probs = f"  P({r['reference']}) {p[0]:.3f} -> {p[1]:.3f}" if None not in p else ""
        flag = "CHANGED" if r["changed"] else "kept   "
        before, after = (_line(r["before"]), _line(r["after"]))
        out.append(f"    {flag} {r['prompt']!r}: {before!r} -> {after!r}{probs}")
    return out


def _line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def edit_file(ws, path: str, batch: bool, hp, as_json: bool, neighbours: str | None) -> None:
    """Every line validated first (a bad one stores nothing), then one edit per line or, with
    ``batch``, one edit holding them all; a progress bar and a summary table (or JSON)."""
    from ftedit.core.factfile import read_facts

    requests = read_facts(path, ws.tok)
    groups = [requests] if batch else [[r] for r in requests]
    infos = []
    with click.progressbar(groups, label=f"editing {len(requests)} facts", file=sys.stderr) as bar:
        for group in bar:
            infos.append(ws.edit(group, hp, neighbours=neighbours))
    if as_json:
        click.echo(json.dumps({"edits": [_edit_json(i) for i in infos]}, sort_keys=True))
        return
    for info in infos:
        wins = sum(
            (a["p_target_new"] > a["p_target_true"])
            if a.get("p_target_true") is not None
            else a["completion"].strip().startswith(r.target_new.strip())
            for r, a in zip(info.requests, info.metrics["after"], strict=True)
        )
        near = info.metrics.get("neighbours") or []
        click.echo(
            f"edit #{info.id}: {len(info.requests)} fact{'s' if len(info.requests) > 1 else ''}, "
            f"{wins}/{len(info.requests)} now answer the new target, {nb.summary(near)}, "
            f"{info.steps} steps, {info.seconds:.1f} s"
        )
        for r, a in zip(info.requests, info.metrics["after"], strict=True):
            click.echo(f"    {r.text!r} -> {_line(a['completion'])!r}")


def _edit_json(info) -> dict:
    return {
        "id": info.id,
        "requests": [r.to_dict() for r in info.requests],
        "before": info.metrics["before"],
        "after": info.metrics["after"],
        "neighbours": info.metrics.get("neighbours", []),
        "steps": info.steps,
        "seconds": info.seconds,
    }
