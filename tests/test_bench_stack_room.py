"""bench/stack_room.py: the room an edit's subject key has left outside the keep basis."""

from __future__ import annotations

import itertools

import pytest
import torch

from ftedit.core.edit_keys import keep_bases
from ftedit.core.key_reads import each_key
from ftedit.core.requests import EditRequest
from tests.benchkit import load_bench
from tests.test_nullspace import hp
from tests.tiny import make_llama

stack_room = load_bench("stack_room")

EARLIER = [
    EditRequest("where is {} located ?", "Nokia", "Japan"),
    EditRequest("where was {} born ?", "Danielle Darrieux", "Berlin"),
    EditRequest("where is {} located ?", "Angola", "Europe"),
]
NEW = EditRequest("where is the {} located ?", "Eiffel Tower", "Rome")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, small_pool):
    """A private model cache, and the three-city keep pool (conftest.small_pool)."""
    monkeypatch.setenv("FTEDIT_CACHE", str(tmp_path / "cache"))


def test_room_is_the_subject_keys_share_outside_the_keep_basis_and_shrinks_with_the_stack():
    """With no earlier edit the room is the subject key's share off the edit's own keep
    basis; each earlier edit kept widens the basis, so the room can only shrink, and the widths
    reported are the basis's two parts."""
    model, tok = make_llama()
    h = hp("llama", keep_nullspace=True, keep_subjects=1, keep_prior_edits=10)
    alone = stack_room.room(model, tok, h, NEW, [])
    own, *_ = keep_bases(model, tok, h, [NEW])
    keys: list = []
    each_key(model, tok, h, [NEW.head], lambda i, k: keys.append(k[0]), None, True)
    (k,) = keys
    (Q,) = own.values()
    assert alone["room"] == pytest.approx(float((k - Q @ (Q.T @ k)).norm() / k.norm()), 1e-5)
    assert 0 < alone["room"] <= 1 and alone["earlier"] == 0 and alone["own"] == Q.shape[1]
    rooms = [alone["room"]]
    for n in range(1, len(EARLIER) + 1):
        got = stack_room.room(model, tok, h, NEW, EARLIER[:n])
        assert got["own"] == alone["own"] and got["earlier"] > 0
        rooms.append(got["room"])
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(rooms))
    assert rooms[-1] < rooms[0] - 1e-3  # three earlier edits' keys took some of it
    assert torch.isfinite(torch.tensor(rooms)).all()
