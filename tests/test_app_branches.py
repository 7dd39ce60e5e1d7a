"""A shared deployment (FTEDIT_SHARED=1) through gradio_client: two sessions, two branches.

The app runs on a tiny Llama (the branch logic does not depend on the model) so this stays fast;
tests/test_app_client.py covers the real model through the same endpoints.
"""

from __future__ import annotations

import pytest
from gradio_client import Client

from tests.appkit import served
from tests.storekit import open_ws
from ui import state

# A tiny-model edit through the /edit endpoint: layer 0, two unconstrained steps.
TINY = ["auto", "0", 1e-2, 2, 0, "prompt_last"]


def _edit(client: Client, subject: str, target: str) -> None:
    client.predict("{} is located in", subject, target, "Paris", *TINY, api_name="/edit")


def _ids(client: Client) -> list[int]:
    edits, _ = client.predict(api_name="/history")
    return sorted(int(row[0]) for row in edits["data"])


@pytest.fixture
def shared_app(monkeypatch):
    monkeypatch.setenv("FTEDIT_SHARED", "1")
    monkeypatch.setenv("FTEDIT_ADMIN_TOKEN", "let-me-publish")
    ws = open_ws()
    state.set_workspace(ws)
    try:
        with served() as url:
            yield ws, url
    finally:
        state.set_workspace(None)


def test_two_sessions_see_only_their_own_edits_until_published(shared_app):
    ws, url = shared_app
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    _edit(alice, "Eiffel Tower", "Rome")
    _edit(bob, "Eiffel Tower", "London")
    assert _ids(alice) == [1] and _ids(bob) == [2]
    with pytest.raises(Exception, match="no edit #1"):
        bob.predict(1, api_name="/revert")  # alice's private edit does not exist for bob
    assert alice.predict(api_name="/verify")["ok"] and bob.predict(api_name="/verify")["ok"]

    with pytest.raises(Exception, match="admin token"):
        alice.predict(1, "wrong", api_name="/publish")
    alice.predict(1, "let-me-publish", api_name="/publish")
    assert _ids(alice) == [1] and _ids(bob) == [1, 2]  # published: seen by both
    for client, active in ((alice, [1]), (bob, [1, 2])):
        assert client.predict(api_name="/verify")["ok"]
        assert ws.live.active == active  # the live weights were on this visitor's branch
    _edit(bob, "Eiffel Tower", "Berlin")
    assert _ids(alice) == [1] and _ids(bob) == [1, 2, 3]
    assert [e.owner is None for e in ws.store.edits()] == [True, False, False]
