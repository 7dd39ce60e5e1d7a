"""Per-visitor branches and limits in the app (FTEDIT_SHARED=1; see ftedit/deploy/visitors.py).

Every handler gets its Workspace from :func:`ui.state.workspace`, which passes it through
:func:`view`: inside a Gradio request on a shared deployment that is the visitor's
:class:`~ftedit.deploy.visitors.Visitor` (their private edits on the published stack), keyed by the
Gradio session, so the handlers themselves need not know about branches.
"""

from __future__ import annotations

from ftedit.deploy.visitors import Visitor, shared
from storage.rules import Branch


def visitor_session() -> str | None:
    """The Gradio session of the request being handled (None outside a request)."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or None


def view(ws):
    """``ws`` as the current visitor sees it.

    Shared deployment: the visitor's branch (outside a request, e.g. handler tests or launch:
    the published stack). Otherwise the Workspace itself, wrapped only to apply the
    per-session rate and upload limits when those are configured.
    """
    if ws is None:
        return ws
    session = visitor_session()
    if shared():
        return Visitor(ws, Branch.of(session) if session else Branch.PUBLISHED, session)
    if session and (ws.limits.rate or ws.limits.max_upload_bytes):
        return Visitor(ws, Branch.ALL, session)
    return ws
