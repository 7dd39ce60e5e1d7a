"""Event handlers: plain functions over the shared Workspace, callable without a server.

Each handler that reads the store or the model takes ``request: gr.Request | None = None``:
Gradio passes the event's request (the documented way, by annotation), and
:func:`ui.state.workspace` turns it into that visitor's explicit view (their branch on a shared
deployment). Called directly (tests, scripts) there is no request: the local user's view.

Every domain error (:class:`ftedit.errors.FteditError`) is turned into ``gr.Error`` here, at the
edge, so the page shows what was wrong and how to fix it, and nothing changes.
"""

import hashlib
import math
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from ftedit.core.hparams import FTHyperParams
from ftedit.core.metrics import target_nll
from ftedit.core.requests import EditRequest, check_prompt_length
from ftedit.deploy.visitors import Visitor, shared
from ftedit.errors import Cancelled, FteditError
from ftedit.parse import InputError, number, ref
from ftedit.parse import edit_id as parse_edit_id
from ftedit.parse import version as parse_version
from ui import state, views
from ui.fields import AUTO, blank, build_hparams, preset_hparams
from ui.stream import stream

# Short fixed contexts in front of the rewritten prompt: a cheap paraphrase check.
PARAPHRASE_PREFIXES = ("Fun fact: ", "Here is what I know. ", "Quiz time! ")


@contextmanager
def _edge():
    try:
        yield
    except FteditError as e:
        raise gr.Error(str(e)) from e


def _edit_id(edit_id) -> int:
    if edit_id is None or (isinstance(edit_id, str) and edit_id.strip() in ("", "nan")):
        raise gr.Error("Select an edit in the History table first (or type its id).")
    try:  # ASCII digits, 1 .. 2**63 - 1: never '٣' as 3, never a database overflow
        return parse_edit_id(edit_id)
    except InputError as e:
        raise gr.Error(f"{str(e)[0].upper()}{str(e)[1:]}.") from None


# ---- hyperparameters (ui/fields.py parses the Advanced fields) ---------------------------
def preset_fields(preset=AUTO):
    """Fill the advanced fields from a preset: layers, lr, steps, norm constraint, objective."""
    with _edge():
        hp = preset_hparams(preset)
    return (
        ", ".join(map(str, hp.layers)),
        hp.lr,
        hp.num_steps,
        hp.norm_constraint or 0,
        hp.objective,
        hp.note or hp.rewrite_module_tmp,
    )


# ---- edit ------------------------------------------------------------------------------------
def _probabilities(ws, prompts: list[str], targets: list[str | None]) -> list[list[float | None]]:
    """P(target | prompt) for every prompt and each target (None stays None), one batch."""
    real = [t for t in targets if t]
    nll = iter(
        target_nll(
            ws.model, ws.tok, [p for p in prompts for _ in real], [t for _ in prompts for t in real]
        )
    )
    out = []
    for _ in prompts:
        got = {t: math.exp(-next(nll)[0]) for t in real}
        out.append([got.get(t) if t else None for t in targets])
    return out


def train_edit(
    v: Visitor,
    request: EditRequest,
    hp: FTHyperParams,
    on_step=None,
    stop: threading.Event | None = None,
    neighbours: str | None = None,
):
    """Train and commit one edit; score the rewrite and its paraphrases before and after.

    Returns (EditInfo, rival target, per-prompt scores). Holds the Workspace lock throughout,
    on ``v``'s branch, so the "before" numbers are those of the stack the edit was trained on.
    ``on_step(k, n, loss)`` after every step; ``stop``, once set, ends training at the next
    step with nothing changed (the page that asked is gone).
    """

    def step(k: int, n: int, loss: float) -> None:
        if on_step is not None:
            on_step(k, n, loss)
        if stop is not None and stop.is_set():
            raise Cancelled(f"the edit was cancelled at step {k}/{n}; nothing was changed")

    with v.on_branch() as ws:  # also follows the store (another process may have changed it)
        request.check_length(ws.tok)
        before_report = ws.report(request) if not request.target_true else {}
        rival = views.rival_target(request, before_report)
        prompts = [request.text] + [p + request.text for p in PARAPHRASE_PREFIXES]
        before = _probabilities(ws, prompts, [request.target_new, rival])
        info = v.edit(request, hp, callback=step, neighbours=neighbours)
        after = _probabilities(ws, prompts, [request.target_new, rival])
    scores = []
    contexts = ["(the prompt itself)", *(p.strip() + " …" for p in PARAPHRASE_PREFIXES)]
    for prompt, context, (nb, rb), (na, ra) in zip(prompts, contexts, before, after, strict=True):
        won = na > ra if rival else na > 0.5
        scores.append(
            {
                "prompt": prompt,
                "context": context,
                "p_new_before": nb,
                "p_new_after": na,
                "p_rival_before": rb,
                "p_rival_after": ra,
                "success_after": won,
            }
        )
    return info, rival, scores


def edit(
    prompt,
    subject,
    target_new,
    target_true=None,
    preset=AUTO,
    layers=None,
    lr=None,
    num_steps=None,
    norm_constraint=None,
    objective=None,
    progress=gr.Progress(),
    request: gr.Request | None = None,
    *,
    neighbours: str | None = None,
    chat_texts: bool = False,
):
    """Rewrite one fact. Yields the live loss curve while training, then the results:
    (summary markdown, before/after table, efficacy table, loss curve). ``neighbours``:
    the subjects to check for side effects (blank: the nearest the model knows)."""
    v = state.workspace(request)
    with _edge():
        fact = EditRequest(prompt or "", subject or "", target_new or "", target_true or None)
        hp = build_hparams(preset, layers, lr, num_steps, norm_constraint, objective, chat_texts)
        fact.check_length(v.tok)  # before the worker and any scoring
    # Training runs in a plain thread whose step callback feeds a queue that this generator
    # drains (ui/stream.py), streaming the loss curve and the progress bar in the request's own
    # context. Closing the generator before the edit ends (the client went away) stops the
    # thread at its next step, and so does the visitor leaving (their cancel flag, ui/state.py):
    # no abandoned thread keeps training under the workspace lock.
    losses: list[float] = []
    sent: list[bool] = []

    def shown(steps: list[tuple[int, int, float]]):
        for k, n, loss in steps:
            losses.append(loss)
            progress((k, n), desc="FT edit", unit="steps")
        status = f"Training… step {len(losses)}/{hp.num_steps}" + (
            f", loss {losses[-1]:.4f}" if losses else " (measuring the answers before the edit)"
        )
        fresh = steps or not sent  # the first update clears the last edit's curve
        sent.append(True)
        return status, gr.skip(), gr.skip(), views.loss_frame(losses) if fresh else gr.skip()

    def work(put, abandoned: threading.Event):
        return train_edit(v, fact, hp, lambda *step: put(step), abandoned, neighbours)

    with _edge():
        info, rival, scores = yield from stream(work, shown)
    m = info.metrics
    yield (
        views.edit_summary(info, rival, scores),
        views.before_after_frame(m["before"][0], m["after"][0]),
        views.scores_frame(scores),
        views.loss_frame(info.losses),
    )


def run_edit(*args, **kwargs):
    """:func:`edit` run to completion: its final results."""
    *_, last = edit(*args, **kwargs)
    return last


# ---- history ---------------------------------------------------------------------------------
def history(request: gr.Request | None = None):
    """(edits table, events table), newest first."""
    ws = state.workspace(request)
    return views.history_frame(ws.history()), views.events_frame(ws.events())


def select_edit(table, evt: gr.SelectData):
    """The id of the History row that was clicked."""
    row = evt.row_value if evt.row_value is not None else table.iloc[evt.index[0]].tolist()
    return int(row[0])


def export(edit_id, request: gr.Request | None = None):
    """Write the edit as a ``.safetensors`` edit file and return its path."""
    edit_id = _edit_id(edit_id)
    with _edge():
        ws = state.workspace(request)
        info = ws.get(edit_id)
        # One folder per store (not one shared by every store and test run), under the
        # system temp dir because Gradio serves downloads only from there (or allowed_paths).
        key = hashlib.sha256(str(ws.home).encode()).hexdigest()[:16]
        export_dir = Path(tempfile.gettempdir()) / "ftedit-exports" / key
        path = export_dir / f"ftedit-edit-{edit_id}-{info.blob_sha256[:12]}.safetensors"
        if not path.exists():
            export_dir.mkdir(parents=True, exist_ok=True)
            ws.export([edit_id], path)
    return str(path)


def details(edit_id, request: gr.Request | None = None):
    """(details markdown, hparams JSON, loss curve, edit file path) of one edit."""
    edit_id = _edit_id(edit_id)
    with _edge():
        info = state.workspace(request).get(edit_id)
    return (
        views.details_md(info),
        views.hparams_json(info),
        views.loss_frame(info.losses),
        export(edit_id, request),
    )


def _status_change(op: str, edit_id, verb: str, request):
    edit_id = _edit_id(edit_id)
    with _edge():
        result = getattr(state.workspace(request), op)(edit_id)
    message = f"Edit #{edit_id} {verb}: now **{result.edit.status}**."
    if result.warning:
        gr.Warning(result.warning)
        message += f"\n\n⚠️ {result.warning}"
    return (message, *history(request), views.details_md(result.edit))


def revert(edit_id, request: gr.Request | None = None):
    """Take an edit off the stack (exact). (message, edits, events, details)"""
    return _status_change("revert", edit_id, "reverted", request)


def reapply(edit_id, request: gr.Request | None = None):
    """Put a reverted edit back on the stack. (message, edits, events, details)"""
    return _status_change("reapply", edit_id, "re-applied", request)


def checkout(version, request: gr.Request | None = None):
    """Make the active set what it was at a version (``v12`` or 12). (message, edits, events)"""
    if not str(version or "").strip():
        raise gr.Error("Type a version from the events table, like v3.")
    with _edge():
        active = state.workspace(request).checkout(parse_version(version))
    return f"Checked out {version}: active edits {active or 'none'}.", *history(request)


def verify(request: gr.Request | None = None):
    """Prove the live weights equal the replay of the store."""
    with _edge():
        return state.workspace(request).verify().to_dict()


def compare_choices(request: gr.Request | None = None):
    """Dropdown choices: the visitor's edits, and versions (events) unless the branch is private."""
    ws = state.workspace(request)
    edits = [
        (f"edit #{e.id}: {views.fact(e.request)[:60]}", str(e.id)) for e in reversed(ws.history())
    ]
    events = [] if ws.private else reversed(ws.events())  # versions hold everyone's edits
    versions = [(f"version v{e.id} (after {e.kind} #{e.edit_id})", f"v{e.id}") for e in events]
    return edits + versions


def compare_options(request: gr.Request | None = None):
    """The two Compare dropdowns, with every edit and version as a choice."""
    choices = compare_choices(request)
    return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)


def refresh(request: gr.Request | None = None):
    """Everything a page (re)load shows: the two tables and the Compare choices."""
    return (*history(request), *compare_options(request))


# ---- compare / playground / import -----------------------------------------------------------
def compare(a, b, request: gr.Request | None = None):
    """Two edits (ids) or two versions (v<event id>): (summary, per-layer norms, behaviour)."""
    if not str(a or "").strip() or not str(b or "").strip():
        raise gr.Error("Pick two edits (e.g. 1 and 2) or two versions (e.g. v1 and v3).")
    with _edge():
        d = state.workspace(request).diff(ref(a), ref(b))
    return views.compare_md(d), views.norms_frame(d), views.behaviour_frame(d)


def generate(prompt, max_new_tokens=20, request: gr.Request | None = None):
    """Greedy completion by the base model and by the current stack: (base, stack)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise gr.Error("Type a prompt to complete, e.g. 'The Eiffel Tower is located in'.")
    with _edge():
        n = 20 if blank(max_new_tokens) else max_new_tokens
        n = number(n, "Max new tokens", integer=True, lo=1, hi=256)
        v = state.workspace(request)
        check_prompt_length(v.tok, prompt)  # the same token limit as an edit's prompt
        with v.on_branch() as ws:
            out = ws.generate(prompt, n, base=True), ws.generate(prompt, n)
    for i, why in sorted(v.broken.items()):
        gr.Warning(f"Edit #{i} is damaged and NOT applied to this answer: {why}")
    return out


def import_file(file, request: gr.Request | None = None):
    """Validate and add an edit file; a refused file changes nothing. (message, edits, events)"""
    if not file:
        raise gr.Error("Choose an edit file (.safetensors, from History → Download) first.")
    path = getattr(file, "name", file)
    from ftedit.versioning.transfer import duplicate_warning

    with _edge():
        v = state.workspace(request)
        with v.on_branch() as ws:
            twice = duplicate_warning(ws, path)
        info = v.import_(path)
    if twice:
        gr.Warning(twice)
    message = f"Imported as edit #{info.id}: {views.fact(info.request)} ({info.status})."
    return message, *history(request)


def publish(edit_id, token, request: gr.Request | None = None):
    """Make one of your edits global (admin token required). (message, edits, events)"""
    if edit_id is None or str(edit_id).strip() in ("", "nan"):
        raise gr.Error("Select one of your edits in the History table first.")
    if not shared():
        raise gr.Error(
            "Publishing is for shared deployments (FTEDIT_SHARED=1): here every "
            "edit is already global."
        )
    try:
        info = state.workspace(request).publish(parse_edit_id(edit_id), token)
    except FteditError as e:
        raise gr.Error(str(e)) from e
    return f"Edit #{info.id} is published: every visitor now has it.", *history(request)
