"""Compare two edits or two versions: tensors, delta norms, cosine, and behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftedit.core.deltas import Deltas
from ftedit.core.metrics import target_probabilities
from ftedit.errors import StoreError

if TYPE_CHECKING:
    from ftedit.versioning.workspace import Workspace

# Scoring a prompt costs forward passes; two distant versions may differ by many edits.
MAX_BEHAVIOUR_EDITS = 50


def _resolve(ws: Workspace, ref: int | str) -> dict:
    """An edit (int, "5", "#5") or a version ("v12": the active set right after event 12).

    ``state`` is the set of edits that make up the model this side stands for: the edit alone
    on the base, or the version's active set.
    """
    text = str(ref).strip().lower()
    if text.startswith("v") and text[1:].isdigit():
        version = int(text[1:])
        base, state = ws.store.state_at(version)
        if base != ws.base_id:
            raise StoreError(f"version v{version} belongs to another base model")
        ids = sorted(i for i, s in state.items() if s == "active")
        return {"kind": "version", "ref": f"v{version}", "edits": ids}
    if text.lstrip("#").isdigit():
        edit_id = int(text.lstrip("#"))
        ws.get(edit_id)  # raises EditNotFoundError with a hint
        return {"kind": "edit", "ref": edit_id, "edits": [edit_id]}
    raise StoreError(f"compare edit ids (e.g. 5) or versions (e.g. v12), got {ref!r}")


def _total(ws: Workspace, ids: list[int]) -> Deltas:
    total = Deltas()
    for i in ids:
        total = total + ws.deltas_of(ws.get(i))
    return total


def _score(ws: Workspace, edit_ids: list[int]) -> dict[int, list[dict]]:
    """P(target_new), P(target_true) of each request of ``edit_ids`` on the current weights."""
    return {
        i: [target_probabilities(ws.model, ws.tok, r) for r in ws.get(i).requests] for i in edit_ids
    }


def _behaviour(ws: Workspace, states: list[list[int]], edit_ids: list[int]) -> list[dict]:
    """Score ``edit_ids``' prompts under each state, then restore the live weights exactly."""
    for ids in states:
        for i in ids:
            ws.deltas_of(ws.get(i))
    scores = []
    for ids in states:
        with ws.live.temporarily(ids):
            scores.append(_score(ws, edit_ids))
    out = []
    for i in edit_ids:
        for k, r in enumerate(ws.get(i).requests):
            out.append(
                {
                    "edit": i,
                    "prompt": r.text,
                    "target_new": r.target_new,
                    "target_true": r.target_true,
                    "a": scores[0][i][k],
                    "b": scores[1][i][k],
                }
            )
    return out


def diff(ws: Workspace, a: int | str, b: int | str) -> dict:
    """Shared/distinct tensors, per-tensor and per-layer norms, cosine, and behaviour.

    Behaviour: for two edits, each edit's prompts scored on base + edit a and on base + edit b;
    for versions, the prompts of the edits active in exactly one of them (at most 50), scored on
    each version's model. The live weights are restored bit for bit afterwards.
    """
    with ws.lock:
        ws._sync()
        ra, rb = _resolve(ws, a), _resolve(ws, b)
        da, db = _total(ws, ra["edits"]), _total(ws, rb["edits"])
        gap = da - db
        na, nb, nd = da.norms(), db.norms(), gap.norms()
        if ra["kind"] == rb["kind"] == "edit":
            involved = sorted(set(ra["edits"]) | set(rb["edits"]))
        else:
            involved = sorted(set(ra["edits"]) ^ set(rb["edits"]))[:MAX_BEHAVIOUR_EDITS]
        behaviour = _behaviour(ws, [ra["edits"], rb["edits"]], involved)
    return {
        "a": ra,
        "b": rb,
        "shared_tensors": sorted(set(da) & set(db)),
        "only_a": sorted(set(da) - set(db)),
        "only_b": sorted(set(db) - set(da)),
        "tensor_norms": {
            n: {"a": na.get(n, 0.0), "b": nb.get(n, 0.0), "a_minus_b": nd[n]} for n in sorted(nd)
        },
        "layer_norms": {"a": da.layer_norms(), "b": db.layer_norms()},
        "norm": {"a": da.norm(), "b": db.norm(), "a_minus_b": gap.norm()},
        "cosine": da.cosine(db),
        "behaviour": behaviour,
    }
