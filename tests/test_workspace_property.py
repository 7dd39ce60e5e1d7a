"""Property: any sequence of edit / revert / reapply / checkout keeps live == fresh replay."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.storekit import (
    HP0,
    HP01,
    HP1,
    REQUESTS,
    assert_replay_equal,
    assert_same,
    open_ws,
    params,
)

HPS = (HP0, HP1, HP01)  # overlapping tensor sets, so stacks share tensors
# Edit file format 2 (compact forms) mixed with format 1 in the same histories.
FORMATS = {
    "dense": HPS,
    "compact": (HP0.replace(store_as="lowrank:2"), HP1.replace(store_as="sign"), HP01),
}
OPS = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, len(REQUESTS) - 1), st.integers(0, len(HPS) - 1)),
    st.tuples(st.just("revert"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("reapply"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("checkout"), st.integers(0, 30), st.just(0)),
)


def _step(ws, hps, op, status: dict[int, str], snapshots: list[set[int]]) -> None:
    """Apply ``op`` to the workspace and to a plain model of the expected state."""
    kind, k, j = op
    active = {i for i, s in status.items() if s == "active"}
    if kind == "edit":
        info = ws.edit(REQUESTS[k], hps[j])
        status[info.id] = "active"
        snapshots.append(active | {info.id})
    elif kind == "revert" and active:
        edit_id = sorted(active)[k % len(active)]
        ws.revert(edit_id)
        status[edit_id] = "reverted"
        snapshots.append(active - {edit_id})
    elif kind == "reapply" and set(status) - active:
        edit_id = sorted(set(status) - active)[k % len(set(status) - active)]
        ws.reapply(edit_id)
        status[edit_id] = "active"
        snapshots.append(active | {edit_id})
    elif kind == "checkout" and snapshots:
        version = k % len(snapshots) + 1
        target = snapshots[version - 1]
        assert ws.checkout(version) == sorted(target)
        for edit_id in sorted(status):  # one event per change, in id order
            new = "active" if edit_id in target else "reverted"
            if status[edit_id] != new:
                status[edit_id] = new
                snapshots.append({i for i, s in status.items() if s == "active"})


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, min_size=1, max_size=7))
def test_random_histories_replay_bit_for_bit(fmt, ops):
    with tempfile.TemporaryDirectory() as tmp:
        ws = open_ws(Path(tmp))
        base = params(ws)
        status: dict[int, str] = {}
        snapshots: list[set[int]] = []
        for op in ops:
            _step(ws, FORMATS[fmt], op, status, snapshots)
            assert ws.active_ids() == sorted(i for i, s in status.items() if s == "active")
            assert_replay_equal(ws)
        for edit_id in ws.active_ids():
            ws.revert(edit_id)
        assert_same(params(ws), base)
        assert ws.verify().ok
