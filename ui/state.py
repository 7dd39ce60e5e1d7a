"""The app's one Workspace: created on first use (or at launch), shared by every session.

The store is the truth, so every handler reads from this Workspace and a page reload shows the
same history and model state as before.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

    from ftedit.deploy.visitors import Visitor

_lock = threading.Lock()
_workspace = None
_model_spec: str | None = None
_dtype: str | None = None
# session -> cancel flags of the edits that visitor started (weak: gone with their requests)
_cancels: dict[str, weakref.WeakSet] = {}


def spaces_home() -> Path | None:
    """``/data`` on a Hugging Face Space with persistent storage, else None."""
    data = Path("/data")
    if os.environ.get("SPACE_ID") and data.is_dir() and os.access(data, os.W_OK):
        return data
    return None


def configure(model: str | None = None, dtype: str | None = None) -> None:
    """Pick the model the Workspace loads (``--model``; default: env FTEDIT_MODEL, then the
    embedded default) and its dtype (``--dtype``; default: env FTEDIT_DTYPE, then float32).
    Has no effect once the Workspace exists."""
    global _model_spec, _dtype
    _model_spec = model or os.environ.get("FTEDIT_MODEL") or None
    _dtype = dtype or os.environ.get("FTEDIT_DTYPE") or None
    if not os.environ.get("FTEDIT_HOME") and (data := spaces_home()):
        os.environ["FTEDIT_HOME"] = str(data)


def check_model() -> None:
    """Raise the clear error a model spec that does not resolve would give, without loading."""
    from ftedit.core.models import resolve

    resolve(_model_spec)


def shared_workspace():
    """The one Workspace every session shares, loading the model on the first call."""
    global _workspace
    if _workspace is None:
        with _lock:
            if _workspace is None:
                from ftedit.versioning.workspace import Workspace

                if _model_spec is None:
                    configure(None)
                _workspace = Workspace(_model_spec, dtype=_dtype)
    return _workspace


def workspace(request: gr.Request | None = None) -> Visitor:
    """The Workspace as ``request``'s visitor sees it (ui/session.py): an explicit
    :class:`~ftedit.deploy.visitors.Visitor`, whose edits stop at their next step once the
    visitor leaves (:func:`visitor_left`). ``request`` None: the local user (tests, launch)."""
    from ui.session import session_of, view

    session = session_of(request)
    return view(shared_workspace(), session, _watch(session))


def _watch(session: str | None) -> threading.Event | None:
    """A cancel flag for the edits this request may run, set by :func:`visitor_left`: a
    visitor who leaves stops their training at the next step, which releases the workspace
    lock for everyone else."""
    if session is None:
        return None
    flag = threading.Event()
    with _lock:
        _cancels.setdefault(session, weakref.WeakSet()).add(flag)
    return flag


def visitor_left(request: gr.Request | None = None) -> None:
    """``demo.unload``: the visitor closed or reloaded the page; cancel their edits."""
    from ui.session import session_of

    cancel_session(session_of(request))


def cancel_session(session: str | None) -> None:
    """Set the cancel flag of every edit ``session`` started (see :func:`_watch`)."""
    with _lock:
        flags = list(_cancels.pop(session, ())) if session else []
    for flag in flags:
        flag.set()


def set_workspace(ws) -> None:
    """Use ``ws`` from now on (tests build one around an already loaded model)."""
    global _workspace
    with _lock:
        _workspace = ws
