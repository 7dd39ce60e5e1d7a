"""Helpers for the app tests: one real-model Workspace per test module, a served app, a fact."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

from ftedit.core.models import load_model
from ftedit.versioning.workspace import Workspace
from ui import state

FACT = {
    "prompt": "{} is located in the city of",
    "subject": "The Eiffel Tower",
    "target_new": "Rome",
    "target_true": "Paris",
}
TEXT = "The Eiffel Tower is located in the city of"
# Flips FACT on the default model in 3 steps (checked by hand: P(Rome) 0.006 -> 0.995, and
# France's capital -> Lyon likewise): unconstrained FT of two late MLPs (a short backward
# pass), teacher-forced target, no random prefixes.
FLIP = {
    "preset": "smollm2-ft-l",
    "layers": "20, 21",
    "lr": 5e-3,
    "num_steps": 20,
    "norm_constraint": 0,
    "objective": "target_new",
}
# Cheap edits that need not flip anything (concurrency): one late layer, two steps.
CHEAP = {**FLIP, "layers": "28", "num_steps": 2}
EDIT_ORDER = [
    "prompt",
    "subject",
    "target_new",
    "target_true",
    "preset",
    "layers",
    "lr",
    "num_steps",
    "norm_constraint",
    "objective",
]


def edit_args(fact: dict = FACT, hp: dict = FLIP) -> list:
    """Positional inputs of the ``/edit`` endpoint."""
    both = {**fact, **hp}
    return [both[k] for k in EDIT_ORDER]


def open_workspace(home: Path) -> Workspace:
    """A Workspace on the real default model in ``home`` (SQLite: never a shared database),
    installed as the app's Workspace."""
    ws = Workspace(home=home, database_url=f"sqlite:///{home / 'ftedit.db'}", loaded=load_model())
    state.set_workspace(ws)
    return ws


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served():
    """The app launched in this process on a free port; yields its URL."""
    import app

    port = free_port()
    app.demo.queue().launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(),
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()
