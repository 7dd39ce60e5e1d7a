"""Replicas and branches on the default model; prints figures (not run by tests).

    FTEDIT_CACHE=~/.cache/ftedit-test-models .venv/bin/python bench/bench_replicas.py
    ... --database-url postgresql+psycopg://postgres@127.0.0.1:55432/ftedit   # (empty database)

1. Pick-up: replica A edits / reverts / re-applies; how long replica B's next model-touching
   call spends bringing its live weights up to date (B sees the change at that call: there
   is no polling delay on top), against B's cost of a call when nothing changed.
2. Branch switch: one Workspace serving two visitors, each with a private edit on top of one
   published edit; the median cost of moving the live weights from one visitor's active set to
   the other's (Workspace.use_branch: the DB check plus rebuilding only the differing tensors).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FTEDIT_CACHE", str(Path.home() / ".cache" / "ftedit-test-models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # a shared 2-core machine: leave a core to the others

from ftedit.core.models import load_model  # noqa: E402
from ftedit.core.requests import EditRequest  # noqa: E402
from ftedit.versioning.workspace import Workspace  # noqa: E402
from storage.db import describe  # noqa: E402
from storage.rules import Branch  # noqa: E402

FACTS = [
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("The capital of {} is", "France", "Lyon", "Paris"),
    EditRequest("{} plays the sport of", "LeBron James", "football", "basketball"),
]


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def _med(xs: list[float]) -> str:
    return (
        f"median {statistics.median(xs):.2f} ms (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"
    )


def bench_pickup(home: Path, url: str | None, steps: int, reps: int) -> None:
    a = Workspace(home=home, database_url=url, loaded=load_model())
    b = Workspace(home=home, database_url=url, loaded=load_model())  # replica: own model copy
    hp = a.default_hparams().replace(num_steps=steps)
    print(
        f"edits: preset 'default' with num_steps={steps}: layers {list(hp.layers)} "
        f"({len(hp.layers)} tensors of {tuple(a.model.model.layers[0].mlp.down_proj.weight.shape)}"
        f", {a.fingerprint.dtype})"
    )
    idle = [_ms(b.active_ids) for _ in range(reps)]
    edit_pick, change_pick = [], []
    for fact in FACTS[:3]:
        a.edit(fact, hp)
        edit_pick.append(_ms(b.active_ids))  # reads the new blob (sha256) + rebuilds
    for _ in range(reps):
        a.revert(2)
        change_pick.append(_ms(b.active_ids))
        a.reapply(2)
        change_pick.append(_ms(b.active_ids))
    assert b.active_ids() == a.active_ids() and b.verify().ok and a.verify().ok
    print(f"B's call, nothing changed:            {_med(idle)}")
    print(f"B picks up A's new edit:              {_med(edit_pick)}")
    print(f"B picks up A's revert / re-apply:     {_med(change_pick)}")


def bench_switch(home: Path, url: str | None, steps: int, reps: int) -> None:
    ws = Workspace(home=home, database_url=url, loaded=load_model())
    hp = ws.default_hparams().replace(num_steps=steps)
    ws.use_branch(Branch.PUBLISHED)
    ws.edit(FACTS[0], hp)  # published: under both visitors
    for owner, fact in (("alice", FACTS[1]), ("bob", FACTS[2])):
        ws.use_branch(Branch.of(owner))
        ws.edit(fact, hp)
    alice, bob = Branch.of("alice"), Branch.of("bob")
    ws.use_branch(alice), ws.use_branch(bob)  # warm-up
    times = []
    for _ in range(reps):
        times.append(_ms(lambda: ws.use_branch(alice)))
        times.append(_ms(lambda: ws.use_branch(bob)))
    same = [_ms(lambda: ws.use_branch(bob)) for _ in range(reps)]
    assert ws.verify().ok
    print(f"switch alice <-> bob ({len(hp.layers)} tensors rebuilt): {_med(times)}")
    print(f"same visitor again (DB check only):  {_med(same)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", help="an EMPTY database (default: SQLite in a temp home)")
    p.add_argument("--steps", type=int, default=3, help="training steps per edit (kept short)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        print(
            f"database: {describe(args.database_url) if args.database_url else 'SQLite'}; "
            f"torch threads {torch.get_num_threads()}"
        )
        bench_pickup(home / "replicas", args.database_url, args.steps, args.reps)
        if args.database_url:
            print("(branch switch skipped: it needs a second empty database)")
            return
        bench_switch(home / "branches", None, args.steps, args.reps)


if __name__ == "__main__":
    main()
