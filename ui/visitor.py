"""What a visitor sees beyond the basic edit: neighbours, the chat answer, several facts at once.

Plain functions over :func:`ui.state.workspace` (callable without a server), kept apart from
``ui/handlers.py``; :func:`edit` wraps :func:`ui.handlers.edit` and adds the "did anything else
change?" table and the chat answer before and after.
"""

from __future__ import annotations

import re

import gradio as gr

from ftedit.core import chat
from ftedit.core import neighbours as nb
from ftedit.core.factfile import table_requests
from ftedit.deploy.visitors import Visitor
from ftedit.errors import FteditError
from ui import fields, handlers, state, views

CHAT_TOKENS = 32
FACT_COLUMNS = ["prompt", "subject", "target_new", "target_true"]


def _ask(ws: Visitor, question: str) -> str:
    try:
        return ws.generate(question, CHAT_TOKENS, chat=True)
    except FteditError as e:
        raise gr.Error(str(e)) from e


def question_placeholder(prompt, subject) -> gr.Textbox:
    """The chat question field's placeholder: the Edit form's sentence as an instruction."""
    prompt, subject = (prompt or "").strip(), (subject or "").strip()
    if prompt.count("{}") != 1 or not subject:
        prompt, subject = "{} is located in the city of", "The Eiffel Tower"
    try:
        return gr.Textbox(placeholder=chat.question_for(prompt, subject))
    except (IndexError, KeyError, ValueError):  # other braces in a half-typed prompt
        return gr.Textbox()


def edit(
    prompt,
    subject,
    target_new,
    target_true=None,
    preset=fields.AUTO,
    layers=None,
    lr=None,
    num_steps=None,
    norm_constraint=None,
    objective=None,
    neighbours=None,
    question=None,
    chat_form=False,
    progress=gr.Progress(),
    request: gr.Request | None = None,
):
    """:func:`ui.handlers.edit`, plus (neighbours headline, neighbours table, chat answer).

    ``neighbours``: subjects to check ("Louvre: Paris, Big Ben"; blank: the nearest of the
    keep pool). ``question``: asked through the chat template before and after the edit.
    ``chat_form``: also train the fact asked through the chat template (hparams.chat_texts),
    so the edit shows in chat answers (bench/README.md §5: slower, more steps).
    """
    question = (question or "").strip()
    ws = state.workspace(request)
    chat_before = _ask(ws, question) if question else None
    inner = handlers.edit(
        prompt,
        subject,
        target_new,
        target_true,
        preset,
        layers,
        lr,
        num_steps,
        norm_constraint,
        objective,
        progress,
        request,
        neighbours=nb.parse_subjects(neighbours) and neighbours or None,
        chat_texts=chat_form,
    )
    skip = (gr.skip(), gr.skip(), gr.skip())
    last = None
    for last in inner:
        yield (*last, *skip)
    match = re.search(r"Edit #(\d+)", str(last[0] if last else ""))
    if not match:  # the edit failed (handlers.edit raised) or was refused
        return
    info = ws.get(int(match.group(1)))
    rows = info.metrics.get("neighbours") or []
    chat_after = _ask(ws, question) if question else None
    yield (
        *last,
        views.neighbours_md(rows),
        views.neighbours_frame(rows),
        views.chat_md(question, chat_before, chat_after),
    )


def run_edit(*args, **kwargs):
    """:func:`edit` run to completion: its final results."""
    *_, last = edit(*args, **kwargs)
    return last


def generate(prompt, max_new_tokens=24, as_chat=False, request: gr.Request | None = None):
    """Playground: base and edited answers, plain completion or (``as_chat``) the assistant's
    answer to ``prompt`` asked through the chat template."""
    if not as_chat:
        return handlers.generate(prompt, max_new_tokens, request)
    if not (prompt or "").strip():
        raise gr.Error("Type a question, e.g. 'Where is the Eiffel Tower?'.")
    n = int(max_new_tokens or 24)
    try:
        with state.workspace(request).on_branch() as ws:
            return (
                ws.generate(prompt, n, base=True, chat=True),
                ws.generate(prompt, n, chat=True),
            )
    except FteditError as e:
        raise gr.Error(str(e)) from e


def edit_facts(
    table,
    one_edit=False,
    preset=fields.AUTO,
    progress=gr.Progress(track_tqdm=False),
    request: gr.Request | None = None,
):
    """Several facts: every row checked first (a bad row is named and nothing is stored),
    then one edit per row or (``one_edit``) one edit holding them all. (summary, edits,
    events)."""
    records = table.to_dict("records") if hasattr(table, "to_dict") else list(table or [])
    records = [{k: r.get(k) for k in FACT_COLUMNS} for r in records]
    ws = state.workspace(request)
    try:
        requests = table_requests(records, ws.tok)
        hp = fields.build_hparams(preset)
    except FteditError as e:
        raise gr.Error(str(e)) from e
    groups = [requests] if one_edit else [[r] for r in requests]
    infos = []
    for i, group in enumerate(groups):
        progress((i, len(groups)), desc=f"fact {i + 1} of {len(groups)}: {group[0].text}")
        try:
            infos.append(ws.edit(group, hp))
        except FteditError as e:
            done = f" ({len(infos)} edits made before it)" if infos else ""
            raise gr.Error(f"fact {i + 1}: {e}{done}") from e
    progress((len(groups), len(groups)), desc="done")
    return views.facts_md(infos), *handlers.history(request)
