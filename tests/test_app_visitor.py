"""What a visitor sees, on a tiny Llama: neighbours and the chat answer with an edit, several
facts from a table, and per-visitor branches by default on a Hugging Face Space."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest
from gradio_client import Client

from ftedit.deploy.visitors import shared
from tests.appkit import served
from tests.storekit import open_ws
from tests.test_chat import TEMPLATE
from ui import handlers as app
from ui import state, visitor

# The tiny model's cheap hyperparameters, as the /edit endpoint's advanced fields take them.
TINY = ["auto", "0", 1e-2, 2, 0, "prompt_last"]
FACT = ["{} is located in the city of", "Eiffel Tower", "Rome", "Paris"]


@pytest.fixture
def tiny_app():
    ws = open_ws()
    ws.tok.chat_template = TEMPLATE
    state.set_workspace(ws)
    yield ws
    state.set_workspace(None)


def test_an_edit_shows_its_neighbours_and_the_chat_answer(tiny_app):
    out = visitor.run_edit(*FACT, *TINY, "Berlin: Germany, Tokyo", "Eiffel Tower")
    summary, _, _, losses, nb_md, nb_df, chat_md = out
    assert "Edit #1" in summary and "efficacy **" in summary
    assert list(losses["step"]) == [str(i) for i in range(1, len(losses) + 1)]  # whole steps
    assert list(nb_df["neighbour prompt"]) == [
        "Berlin is located in the city of",
        "Tokyo is located in the city of",
    ]
    assert "of 2 neighbouring facts" in nb_md
    stored = tiny_app.get(1).metrics["neighbours"]
    assert [r["subject"] for r in stored] == ["Berlin", "Tokyo"]
    assert stored[0]["reference"] == "Germany"
    assert chat_md.startswith("**Asked as a question:** Eiffel Tower")
    assert tiny_app.generate("Eiffel Tower", visitor.CHAT_TOKENS, chat=True)[:60] in chat_md
    # The History and the Edit tab give the same efficacy figure for the edit.
    edits, _ = visitor.handlers.history()
    assert f"efficacy **{edits.iloc[0]['efficacy']}**" in summary


def test_the_chat_form_box_trains_the_chat_turn_too(tiny_app):
    """ "Also train it as a chat answer" adds chat_texts to whatever the fields chose; unticked
    (or anything but a real True from an API client) the preset is left alone."""
    visitor.run_edit(*FACT, *TINY, None, "", True)
    visitor.run_edit(*FACT, *TINY, None, "", "yes")
    first, second = tiny_app.get(1).hparams, tiny_app.get(2).hparams
    assert first.chat_texts is True and second.chat_texts is False
    assert first.num_steps == second.num_steps == 2  # the advanced fields still apply
    tiny_app.tok.chat_template = None
    with pytest.raises(gr.Error, match="chat template"):
        visitor.run_edit(*FACT, *TINY, None, "", True)
    assert len(tiny_app.history()) == 2  # refused: nothing stored


def test_playground_chat_mode_uses_the_template(tiny_app):
    base, edited = visitor.generate("Eiffel Tower", 4, True)
    assert base == edited == tiny_app.generate("Eiffel Tower", 4, chat=True)
    assert visitor.generate("Eiffel Tower", 4, False) == visitor.handlers.generate(
        "Eiffel Tower", 4
    )


def test_several_facts_from_a_table(tiny_app):
    rows = pd.DataFrame(
        [FACT, ["The capital of {} is", "France", "Lyon", ""]], columns=visitor.FACT_COLUMNS
    )
    bad = pd.concat([rows, pd.DataFrame([["no braces", "x", "y", ""]], columns=rows.columns)])
    with pytest.raises(Exception, match="the table line 3: prompt must"):
        visitor.edit_facts(bad, False, "auto")
    assert tiny_app.history() == []  # nothing stored for a table with a bad row
    hp = {"layers": (0,), "num_steps": 2, "keep_subjects": 0}
    orig = visitor.fields.build_hparams
    visitor.fields.build_hparams = lambda preset: orig(preset).replace(**hp)
    try:
        md, edits, _ = visitor.edit_facts(rows, False, "auto")
        assert "| #1 | 1 |" in md and "| #2 | 1 |" in md and len(edits) == 2
        md, edits, _ = visitor.edit_facts(rows, True, "auto")
        assert "| #3 | 2 |" in md and len(tiny_app.get(3).requests) == 2
    finally:
        visitor.fields.build_hparams = orig


def test_branches_are_on_by_default_on_a_space_only(monkeypatch):
    monkeypatch.delenv("FTEDIT_SHARED", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not shared()  # locally nothing changes
    monkeypatch.setenv("SPACE_ID", "someone/ftedit")
    assert shared()
    monkeypatch.setenv("FTEDIT_SHARED", "0")
    assert not shared()  # the Space's owner can turn them off


def test_two_space_visitors_are_isolated(monkeypatch, tiny_app):
    monkeypatch.delenv("FTEDIT_SHARED", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/ftedit")
    with served() as url:
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        alice.predict(*FACT, *TINY, "", "", api_name="/edit")
        bob.predict(FACT[0], FACT[1], "London", "Paris", *TINY, "", "", api_name="/edit")
        for client, mine in ((alice, 1), (bob, 2)):
            edits, _ = client.predict(api_name="/history")
            assert [row[0] for row in edits["data"]] == [mine]
            assert edits["headers"][-1] == "visibility" and edits["data"][0][-1] == "private"
        with pytest.raises(Exception, match="no edit #1"):
            bob.predict(1, api_name="/revert")  # alice's edit does not exist for bob
        assert alice.predict(api_name="/verify")["ok"] and bob.predict(api_name="/verify")["ok"]
    # Compare offers a visitor only what they may compare: their own edit, no version (a
    # version holds every visitor's edits; diff refuses it on a private branch).
    owner = next(e.owner for e in state.shared_workspace().store.edits() if e.id == 1)
    alice_request = type("Request", (), {"session_hash": owner})()
    assert [v for _, v in app.compare_choices(alice_request)] == ["1"]
