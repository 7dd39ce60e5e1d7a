"""Per-visitor branches on a shared deployment (``FTEDIT_SHARED=1``).

One Workspace serves every visitor. Each visitor's edits are private to them (``edits.owner``)
and layered on the shared, published stack; an admin (``FTEDIT_ADMIN_TOKEN``) publishes an edit
to make it global. :class:`Visitor` is one visitor's view: before every model-touching call it
takes the Workspace lock and moves the live weights to that visitor's active set
(:meth:`Workspace.use_branch`: only the deltas that differ are applied or removed, each touched
tensor rebuilt from base + the ordered set, so it is exact). Queries need no lock.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import os
from typing import TYPE_CHECKING

from ftedit.errors import LimitError, StoreError
from ftedit.versioning.limits import RateLimiter
from ftedit.versioning.records import EditInfo, EventInfo
from storage.rules import Branch

if TYPE_CHECKING:
    from ftedit.versioning.workspace import Workspace


def shared() -> bool:
    """Is this a shared deployment (per-visitor branches)? ``FTEDIT_SHARED=1``; on a Hugging
    Face Space (``SPACE_ID`` set) too, unless ``FTEDIT_SHARED`` says otherwise (``0``): a
    public page must not let one visitor's edit or revert change what every other one sees."""
    flag = os.environ.get("FTEDIT_SHARED", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes")
    return bool(os.environ.get("SPACE_ID", "").strip())


def is_admin(token: str | None) -> bool:
    """Does ``token`` equal ``FTEDIT_ADMIN_TOKEN``? (never, when that is unset)."""
    expected = os.environ.get("FTEDIT_ADMIN_TOKEN", "")
    return bool(expected) and hmac.compare_digest(str(token or ""), expected)


def _rate(ws: Workspace) -> RateLimiter:
    # One limiter per Workspace (per process), keyed by visitor session.
    if getattr(ws, "_visitor_rate", None) is None:
        ws._visitor_rate = RateLimiter(ws.limits.rate)
    return ws._visitor_rate


class Visitor:
    """A visitor's view of a shared Workspace: their private edits on the published stack.

    ``branch`` (:class:`storage.rules.Branch`): ``Branch.of(session)`` on a shared deployment,
    ``Branch.PUBLISHED`` outside a request, ``Branch.ALL`` on a single-user deployment where only
    the rate and upload limits apply. ``session`` keys the per-session rate limit. Attributes it
    does not define come from the Workspace.
    """

    def __init__(self, ws: Workspace, branch: Branch, session: str | None = None):
        self.ws, self.branch = ws, branch
        self.session = session or branch.visitor or "-"

    @property
    def private(self) -> bool:
        return self.branch.private

    def __getattr__(self, name: str):
        attr = getattr(self.ws, name)
        # Safe by default: EVERY Workspace method reached through here runs on this visitor's
        # branch, under the lock, so a new weight-touching method cannot run on another
        # visitor's weights. Plain attributes (model, tok, limits, home, ...) pass through.
        if not (inspect.ismethod(attr) and attr.__self__ is self.ws):
            return attr

        @functools.wraps(attr)
        def on_branch(*args, **kwargs):
            with self.ws.lock:
                self.ws.use_branch(self.branch)
                return attr(*args, **kwargs)

        return on_branch

    # ---- queries: no lock, no weights ----------------------------------------------------
    def history(self) -> list[EditInfo]:
        return [EditInfo.from_stored(e) for e in self.ws.store.edits(self.ws.base_id, self.branch)]

    def events(self) -> list[EventInfo]:
        return self.ws.store.events(self.ws.base_id, self.branch)

    def get(self, edit_id: int) -> EditInfo:
        return EditInfo.from_stored(self.ws.store.get(edit_id, self.ws.base_id, self.branch))

    # ---- limited or guarded operations ---------------------------------------------------
    def edit(self, *args, **kwargs) -> EditInfo:
        _rate(self.ws).check(self.session)
        return self.__getattr__("edit")(*args, **kwargs)

    def import_(self, path) -> EditInfo:
        self.ws.limits.check_upload(path)
        _rate(self.ws).check(self.session)
        return self.__getattr__("import_")(path)

    def revert(self, edit_id: int):
        self._own(edit_id, "revert")
        return self.__getattr__("revert")(edit_id)

    def reapply(self, edit_id: int):
        self._own(edit_id, "re-apply")
        return self.__getattr__("reapply")(edit_id)

    def checkout(self, version):
        if self.private:
            raise LimitError(
                "checking out a version changes the shared stack: on a shared "
                "deployment only an admin can (use `ftedit checkout` on the store)"
            )
        return self.__getattr__("checkout")(version)

    def diff(self, a, b) -> dict:
        if self.private and any(str(x).strip().lower().startswith("v") for x in (a, b)):
            raise LimitError(
                "versions hold every visitor's edits: on a shared deployment "
                "compare two edit ids instead"
            )
        return self.__getattr__("diff")(a, b)

    def publish(self, edit_id: int, token: str | None) -> EditInfo:
        """Make one of this branch's edits global; needs the admin token."""
        if not is_admin(token):
            raise LimitError(
                "publishing needs the admin token (FTEDIT_ADMIN_TOKEN)"
                if os.environ.get("FTEDIT_ADMIN_TOKEN")
                else "publishing is off: set FTEDIT_ADMIN_TOKEN on the server"
            )
        return self.__getattr__("publish")(edit_id)

    def _own(self, edit_id: int, verb: str) -> None:
        edit = self.get(edit_id)  # EditNotFoundError for another visitor's private edit
        if self.private and edit.owner is None:
            raise StoreError(
                f"edit #{edit_id} is published: visitors cannot {verb} it on a "
                "shared deployment (an admin can, from the command line)"
            )
