"""The app's handlers called directly (no server): edit -> history -> revert, and bad input."""

from __future__ import annotations

import gradio as gr
import pytest

import app
from tests.appkit import FACT, FLIP, TEXT, edit_args, open_workspace

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return open_workspace(tmp_path_factory.mktemp("app-handlers"))


def test_edit_history_revert_restores_the_base_answer(ws):
    base_answer, stack_answer = app.generate(TEXT, 6)
    assert base_answer == stack_answer and "Paris" in base_answer

    summary, before_after, scores, losses = app.run_edit(*edit_args())
    assert "Edit #1" in summary and "Now answers **Rome" in summary
    assert before_after["after"][0].strip().startswith("Rome")
    assert (scores["new wins"] == "yes").sum() >= 2  # the rewrite and some paraphrases
    assert len(losses) >= 1 and losses["loss"].iloc[-1] < losses["loss"].iloc[0]

    edits, events = app.history()
    row = edits.iloc[0]
    assert (row["id"], row["status"], row["efficacy"]) == (1, "active", "1/1")
    assert "Eiffel Tower" in row["fact"] and list(events["kind"]) == ["created"]
    base_now, edited = app.generate(TEXT, 6)
    assert base_now == base_answer and edited.strip().startswith("Rome")

    md, hp_json, _, path = app.details(int(row["id"]))
    assert "Edit #1" in md and '"lr": 0.005' in hp_json and path.endswith(".safetensors")

    message, edits, events, _ = app.revert(1)
    assert "reverted" in message and edits.iloc[0]["status"] == "reverted"
    assert list(events["kind"]) == ["reverted", "created"]
    assert app.generate(TEXT, 6) == (base_answer, base_answer)

    message, edits, _, _ = app.reapply(1)
    assert edits.iloc[0]["status"] == "active"
    assert app.generate(TEXT, 6)[1].strip().startswith("Rome")
    assert app.verify()["ok"]

    # Import the exported file back: same base, so it is accepted as a new edit.
    msg, edits, _ = app.import_file(path)
    assert "Imported as edit #2" in msg and len(edits) == 2

    summary, norms, behaviour = app.compare("1", "2")
    assert "cosine(A, B) = **1.0000**" in summary
    assert set(norms["layer"]) == {"20", "21"} and len(behaviour) == 2
    assert list(norms["bar"]) == ["20 A", "20 B", "21 A", "21 B"]  # one bar each, not stacked
    summary, _, _ = app.compare("v1", "v3")
    assert "version v1" in summary

    # Edit #2 (imported) stacks on #1's tensors: reverting #1 must say so (gr.Warning + message).
    with pytest.warns(
        UserWarning, match="imported edit #2 was applied after it"
    ):  # gr.Warning outside a request
        message, edits, _, _ = app.revert(1)
    assert "⚠️" in message and edits.set_index("id").loc[1, "status"] == "reverted"
    assert app.verify()["ok"]


@pytest.mark.parametrize(
    "field, value, fix",
    [
        ("prompt", "The Eiffel Tower is in", "exactly one '{}'"),
        ("subject", "", "subject must be a non-empty string"),
        ("target_new", "Paris", "nothing to rewrite"),
        ("layers", "ten", "block numbers separated by commas"),
        ("lr", -1, "lr must be > 0"),
    ],
)
def test_bad_input_is_a_gr_error_and_changes_nothing(ws, field, value, fix):
    before = app.history()[0]
    args = {**FACT, **FLIP, field: value}
    with pytest.raises(gr.Error, match=fix):
        app.run_edit(**args)
    assert app.history()[0].equals(before)


def test_bad_ids_and_files_are_gr_errors(ws, tmp_path):
    with pytest.raises(gr.Error, match="Select an edit"):
        app.revert(None)
    with pytest.raises(gr.Error, match="99"):
        app.revert(99)
    with pytest.raises(gr.Error, match="Type a prompt"):
        app.generate("  ")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not an edit file")
    before = app.history()
    with pytest.raises(gr.Error):
        app.import_file(str(bogus))
    after = app.history()
    assert after[0].equals(before[0]) and after[1].equals(before[1])


def test_serves_localhost_by_default_with_bounded_uploads(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])
    assert (args.host, args.share, args.model) == ("127.0.0.1", False, None)
    assert app.parse_args(["--host", "0.0.0.0", "--share"]).share
    assert app.launch_options()["max_file_size"]
