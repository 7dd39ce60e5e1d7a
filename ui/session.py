"""Each request's view of the Workspace (see ftedit/deploy/visitors.py).

Handlers declare ``request: gr.Request | None = None``; Gradio passes the request of the event
being handled (tests and scripts call the handlers without one). :func:`view` turns the one
Workspace and that request into an explicit :class:`~ftedit.deploy.visitors.Visitor`: on a
shared deployment the visitor's branch (their private edits on the published stack), keyed by
the Gradio session; otherwise every edit, with the per-session rate and upload limits only
when those are configured and there is a session to key them by.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ftedit.deploy.visitors import Visitor, shared
from storage.rules import Branch

if TYPE_CHECKING:
    import gradio as gr

    from ftedit.versioning.workspace import Workspace


def session_of(request: gr.Request | None) -> str | None:
    """The Gradio session of ``request`` (None without one: a direct call, the launch)."""
    return getattr(request, "session_hash", None) or None


def view(ws: Workspace, session: str | None, cancel: threading.Event | None = None) -> Visitor:
    """``ws`` as the visitor of ``session`` sees it (None: the local user, or on a shared
    deployment the published stack). ``cancel`` stops their edits at the next step."""
    if shared():
        branch = Branch.of(session) if session else Branch.PUBLISHED
        return Visitor(ws, branch, session, cancel=cancel)
    limited = bool(session and (ws.limits.rate or ws.limits.max_upload_bytes))
    return Visitor(ws, Branch.ALL, session, limited=limited, cancel=cancel)
