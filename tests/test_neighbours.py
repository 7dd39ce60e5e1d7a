"""The "did anything else change?" table: neighbour probes measured before and after an edit."""

from __future__ import annotations

import pytest

from ftedit.core import neighbours as nb
from ftedit.core.hparams import load_preset
from ftedit.core.metrics import complete
from ftedit.core.requests import EditRequest
from tests.storekit import open_ws

REQ = EditRequest("{} is located in the city of", "Eiffel Tower", "Rome", "Paris")


def test_parse_subjects_reads_names_and_known_answers():
    got = nb.parse_subjects("Louvre: Paris, Big Ben\nColosseum : Rome, Louvre, ")
    assert got == [("Louvre", "Paris"), ("Big Ben", None), ("Colosseum", "Rome")]
    assert nb.parse_subjects(["a", " "]) == [("a", None)] and nb.parse_subjects(None) == []


def test_batched_greedy_answers_equal_one_at_a_time(tiny_llama):
    model, tok = tiny_llama
    prompts = ["the capital of France is", "Paris", "the Eiffel Tower is located in the city of"]
    got = nb.greedy_answers(model, tok, prompts, 4)
    assert got == [complete(model, tok, p, 4) for p in prompts]


def test_listed_subjects_are_probed_and_compared(tiny_llama):
    model, tok = tiny_llama
    probes = nb.pick(model, tok, [REQ], load_preset("fast"), "Berlin: Germany, Eiffel Tower, Tokyo")
    # The edited subject itself is never its own neighbour; a known answer is the reference.
    assert [p["subject"] for p in probes] == ["Berlin", "Tokyo"]
    assert probes[0]["prompt"] == "Berlin is located in the city of"
    before = nb.measure(model, tok, probes)
    assert before[0]["reference"] == "Germany" and before[1]["reference"]  # its first word
    assert all(0 < r["p_new"] < 1 for r in before)
    rows = nb.compare(before, nb.measure(model, tok, before))  # same weights: nothing moved
    assert [r["changed"] for r in rows] == [False, False]
    assert nb.summary(rows) == "kept 2 of 2 neighbouring facts"
    moved = nb.compare(before, [{**before[0], "answer": "x y"}, before[1]])
    assert nb.summary(moved) == "kept 1 of 2 neighbouring facts (changed: Berlin)"


def test_workspace_stores_the_neighbours_with_the_edit(tmp_path):
    ws = open_ws(tmp_path / "h")
    hp = load_preset("fast").replace(layers=(0,), num_steps=2)
    info = ws.edit(REQ, hp)
    rows = ws.get(info.id).metrics["neighbours"]  # read back from the store
    assert len(rows) == nb.DEFAULT_K and all(REQ.subject not in r["subject"] for r in rows)
    assert {"prompt", "before", "after", "changed", "p_reference_before"} <= set(rows[0])
    info = ws.edit(REQ, hp, neighbours=["Berlin"])
    assert [r["subject"] for r in ws.get(info.id).metrics["neighbours"]] == ["Berlin"]


@pytest.mark.real_model
def test_a_well_known_edit_lists_what_moved_and_what_was_kept(tmp_path, real_model):
    from ftedit.versioning.workspace import Workspace

    ws = Workspace(home=tmp_path / "h", loaded=real_model)
    try:
        req = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
        info = ws.edit(req, load_preset("fast"))
        assert info.metrics["after"][0]["completion"].strip().startswith("Rome")
        rows = info.metrics["neighbours"]
        assert len(rows) == nb.DEFAULT_K
        assert all(r["prompt"] == req.prompt.format(r["subject"]) for r in rows)
        for r in rows:  # "changed" is exactly: the answer's first word moved
            assert r["changed"] == (nb.first_word(r["before"]) != nb.first_word(r["after"]))
        kept = [r for r in rows if not r["changed"]]
        assert kept, "some neighbouring city answer should survive the edit"
        assert nb.summary(rows).startswith(f"kept {len(kept)} of {len(rows)}")
        # The fast preset has no keep penalty: the table shows the edit leaking "Rome" into
        # neighbours (their P(Rome) rises), which is what it is there to reveal.
        leaked = [r for r in rows if nb.first_word(r["after"]) == "Rome"]
        assert leaked and all(r["p_new_after"] > r["p_new_before"] for r in leaked)
    finally:
        ws.revert(info.id)  # the session's shared model goes back to its base bits
