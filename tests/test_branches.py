"""Per-visitor branches: private edits on the published stack, exact switches, publishing."""

from __future__ import annotations

import pytest

from ftedit.deploy.visitors import Visitor
from ftedit.errors import EditNotFoundError, LimitError, StoreError
from ftedit.versioning.limits import Limits
from storage.rules import Branch
from tests.storekit import HP0, HP1, REQUESTS, assert_same, open_ws, params

pytestmark = pytest.mark.usefixtures("database_url")


def test_visitors_see_only_their_own_unpublished_edits(monkeypatch):
    ws = open_ws()
    base = params(ws)
    alice, bob = Visitor(ws, Branch.of("alice")), Visitor(ws, Branch.of("bob"))
    a1 = alice.edit(REQUESTS[0], HP0)
    assert a1.owner == "alice" and [e.id for e in alice.history()] == [a1.id]
    assert bob.history() == [] and bob.events() == [] and bob.active_ids() == []
    assert_same(params(ws), base)  # bob's requests run on the base model
    with pytest.raises(EditNotFoundError):
        bob.get(a1.id)
    with pytest.raises(EditNotFoundError):
        bob.revert(a1.id)
    b1 = bob.edit(REQUESTS[1], HP1)
    assert [e.id for e in bob.history()] == [b1.id] and alice.active_ids() == [a1.id]
    assert alice.verify().ok and bob.verify().ok

    with pytest.raises(LimitError, match="publishing is off"):
        alice.publish(a1.id, "guess")
    monkeypatch.setenv("FTEDIT_ADMIN_TOKEN", "s3cret")
    with pytest.raises(LimitError, match="needs the admin token"):
        alice.publish(a1.id, "guess")
    assert alice.publish(a1.id, "s3cret").owner is None
    assert bob.active_ids() == [a1.id, b1.id]  # published: now under bob's edit too
    assert alice.active_ids() == [a1.id]
    assert [e.kind for e in bob.events()] == ["created", "created", "published"]
    with pytest.raises(StoreError, match="is published: visitors cannot revert"):
        bob.revert(a1.id)
    for v in (alice, bob):  # each branch equals a fresh replay of that branch
        v.active_ids()
        fresh = open_ws(ws.home)
        fresh.use_branch(v.branch)
        assert_same(params(ws), params(fresh))
        assert v.verify().ok


def test_switching_branches_rebuilds_only_the_tensors_that_differ(monkeypatch):
    ws = open_ws()
    shared = Visitor(ws, Branch.PUBLISHED).edit(REQUESTS[0], HP0)  # a published edit on layer 0
    alice, bob = Visitor(ws, Branch.of("alice")), Visitor(ws, Branch.of("bob"))
    alice.edit(REQUESTS[1], HP1)  # layer 1, private
    bob.edit(REQUESTS[2], HP0)  # layer 0, private
    rebuilt = []
    real = ws.live.set_active
    monkeypatch.setattr(
        ws.live, "set_active", lambda ids, names=None: rebuilt.append(real(ids, names))
    )
    alice.active_ids()
    assert rebuilt[-1] == sorted(
        {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    )
    assert ws.live.active == [shared.id, 2]
    rebuilt.clear()
    alice.active_ids()
    assert rebuilt == []  # same branch, nothing new: nothing touched
    assert bob.verify().ok and alice.verify().ok


def test_the_model_is_reached_only_on_the_visitors_branch():
    """No attribute pass-through: a Visitor has no ``model`` or ``live``, and the Workspace it
    hands out (``on_branch``) has the live weights on that visitor's branch, under the lock."""
    ws = open_ws()
    alice, bob = Visitor(ws, Branch.of("alice")), Visitor(ws, Branch.of("bob"))
    mine = alice.edit(REQUESTS[1], HP1).id  # private to alice
    for name in ("model", "live", "lock", "store", "_sync"):
        assert not hasattr(bob, name)
    seen = []
    for v in (bob, alice, bob):
        with v.on_branch() as w:
            seen.append((list(w.live.active), w.lock._is_owned()))
    assert seen == [([], True), ([mine], True), ([], True)]
    assert not ws.lock._is_owned()
    assert bob.tok is ws.tok and bob.limits is ws.limits


def test_visitor_limits_and_refusals(tmp_path):
    ws = open_ws()
    ws.limits = Limits(rate=(1, 60), max_upload_bytes=10)
    alice = Visitor(ws, Branch.of("alice"))
    alice.edit(REQUESTS[0], HP0)
    with pytest.raises(LimitError, match="rate limit"):
        alice.edit(REQUESTS[1], HP0)
    Visitor(ws, Branch.of("bob")).edit(REQUESTS[1], HP1)  # bob has his own budget
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"x" * 11)
    with pytest.raises(LimitError, match="FTEDIT_MAX_UPLOAD"):
        alice.import_(big)
    with pytest.raises(LimitError, match="only an admin"):
        alice.checkout(1)
    with pytest.raises(LimitError, match="compare two edit ids"):
        alice.diff("v1", "v2")
    assert [e.id for e in alice.history()] == [1]


def test_a_revert_warning_names_only_edits_on_the_same_branch():
    ws = open_ws()
    alice, bob = Visitor(ws, Branch.of("alice")), Visitor(ws, Branch.of("bob"))
    alice.edit(REQUESTS[0], HP0)
    bob.edit(REQUESTS[1], HP0)  # same tensor, later id, but never trained on alice's edit
    assert alice.revert(1).warning is None
    alice.reapply(1)
    alice.edit(REQUESTS[2], HP0)
    assert "#3 was trained on top of it" in alice.revert(1).warning
