"""The launched app driven through its public API names with gradio_client, alone and by several
clients at once (one model queue: afterwards verify passes and the history is complete)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from ftedit.core.hparams import load_preset
from ftedit.core.requests import EditRequest
from tests.appkit import CHEAP, FACT, TEXT, edit_args, open_workspace, served

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return open_workspace(tmp_path_factory.mktemp("app-client"))


@pytest.fixture(scope="module")
def client(ws):
    with served() as url:
        yield Client(url, verbose=False)


def _rows(table: dict) -> list[dict]:
    return [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]


def test_public_api_names(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {
        "/edit",
        "/history",
        "/revert",
        "/reapply",
        "/generate",
        "/compare",
        "/import",
        "/export",
        "/checkout",
        "/verify",
    } <= names


def test_edit_history_revert_through_the_api(client, ws):
    base, stack = client.predict(TEXT, 6, api_name="/generate")
    assert base == stack and "Paris" in base

    summary, *_ = client.predict(*edit_args(), api_name="/edit")
    assert "Now answers **Rome" in summary
    edits, events = client.predict(api_name="/history")
    (row,) = _rows(edits)
    assert (row["status"], row["efficacy"]) == ("active", "1/1")
    assert client.predict(TEXT, 6, api_name="/generate")[1].strip().startswith("Rome")

    path = client.predict(row["id"], api_name="/export")
    message, edits, events, _ = client.predict(row["id"], api_name="/revert")
    assert _rows(edits)[0]["status"] == "reverted"
    assert [e["kind"] for e in _rows(events)] == ["reverted", "created"]
    assert client.predict(TEXT, 6, api_name="/generate") == (base, base)

    message, edits, _ = client.predict(handle_file(path), api_name="/import")
    assert "Imported as edit #2" in message
    summary, _, _ = client.predict("1", "2", api_name="/compare")
    assert "cosine(A, B) = **1.0000**" in summary
    assert client.predict(api_name="/verify")["ok"]


def test_many_clients_at_once_share_one_queue(client, ws):
    """Edits, reverts and generations fired together: nothing is lost or interleaved."""
    # Its own starting point, whatever ran before (alone it makes them): edits #1 (reverted)
    # and #2 (active), which the clients below reapply and revert.
    cheap = load_preset("smollm2-ft-l").replace(
        layers=(28,), lr=5e-3, num_steps=2, norm_constraint=None, objective="target_new"
    )
    while len(ws.history()) < 2:
        ws.edit(EditRequest.from_dict(FACT), cheap)
    if ws.get(1).active:
        ws.revert(1)
    if not ws.get(2).active:
        ws.reapply(2)
    url = client.src
    start, start_events = len(ws.history()), len(ws.events())
    facts = [
        {
            "prompt": "{} plays the sport of",
            "subject": "LeBron James",
            "target_new": "football",
            "target_true": "basketball",
        },
        {
            "prompt": "The capital of {} is",
            "subject": "France",
            "target_new": "Lyon",
            "target_true": "Paris",
        },
        {
            "prompt": "The mother tongue of {} is",
            "subject": "Danielle Darrieux",
            "target_new": "English",
            "target_true": "French",
        },
    ]

    jobs = [lambda c, f=f: c.predict(*edit_args(f, CHEAP), api_name="/edit") for f in facts]
    jobs += [lambda c: c.predict(TEXT, 4, api_name="/generate") for _ in range(2)]
    jobs += [
        lambda c: c.predict(1, api_name="/reapply"),  # reverted by the test above
        lambda c: c.predict(2, api_name="/revert"),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job, Client(url, verbose=False)) for job in jobs]:
            future.result(timeout=240)  # re-raises a client's error here
    history = ws.history()
    assert len(history) == start + len(facts)
    assert {e.request.subject for e in history[start:]} == {f["subject"] for f in facts}
    kinds = [e.kind for e in ws.events()]
    assert kinds[start_events:].count("created") == len(facts)
    assert kinds[start_events:].count("reapplied") == kinds[start_events:].count("reverted") == 1
    assert len(kinds) == start_events + len(facts) + 2
    assert ws.get(1).status == "active" and ws.get(2).status == "reverted"
    assert ws.verify().ok
    edits, _ = client.predict(api_name="/history")
    assert len(edits["data"]) == len(history)
