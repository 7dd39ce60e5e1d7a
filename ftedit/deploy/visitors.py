"""Per-visitor branches on a shared deployment (``FTEDIT_SHARED=1``).

One Workspace serves every visitor. Each visitor's edits are private to them (``edits.owner``)
and layered on the shared, published stack; an admin (``FTEDIT_ADMIN_TOKEN``) publishes an edit
to make it global. :class:`Visitor` is one request's view, built explicitly per request by the
app (ui/session.py): it offers only the operations it defines, and each one that touches the
weights first takes the Workspace lock and moves the live weights to that visitor's active set
(:meth:`Workspace.use_branch`: only the deltas that differ are applied or removed, each touched
tensor rebuilt from base + the ordered set, so it is exact). The model itself is reached only
through :meth:`Visitor.on_branch`, so no code path can read or change another visitor's
weights by forgetting to switch. Queries need no lock.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ftedit.errors import LimitError, StoreError
from ftedit.versioning.limits import RateLimiter
from ftedit.versioning.records import EditInfo, EventInfo, OpResult, VerifyReport
from storage.rules import Branch

if TYPE_CHECKING:
    from ftedit.core.hparams import FTHyperParams
    from ftedit.core.requests import EditRequest
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
    """One request's view of a shared Workspace: their private edits on the published stack.

    ``branch`` (:class:`storage.rules.Branch`): ``Branch.of(session)`` on a shared deployment,
    ``Branch.PUBLISHED`` outside a request, ``Branch.ALL`` on a single-user deployment.
    ``session`` keys the per-session rate limit; ``limited=False`` turns the rate and upload
    limits off (a single user outside a request, as the Workspace itself). ``cancel``: the
    flag that stops this visitor's edits at their next step (set when the visitor leaves).
    There is no attribute pass-through: what a handler needs is defined here, explicitly.
    """

    def __init__(
        self,
        ws: Workspace,
        branch: Branch,
        session: str | None = None,
        *,
        limited: bool = True,
        cancel: threading.Event | None = None,
    ):
        self.ws, self.branch, self.limited, self.cancel = ws, branch, limited, cancel
        self.session = session or branch.visitor or "-"

    @property
    def private(self) -> bool:
        return self.branch.private

    @contextmanager
    def on_branch(self) -> Iterator[Workspace]:
        """The Workspace, its live weights on this branch, under its lock (re-entrant): the one
        way to the model (scores, probabilities, several operations on one stack)."""
        with self.ws.lock:
            self.ws.use_branch(self.branch)
            yield self.ws

    # ---- plain values: no weights ----------------------------------------------------------
    @property
    def tok(self):
        return self.ws.tok

    @property
    def limits(self):
        return self.ws.limits

    @property
    def home(self) -> Path:
        return self.ws.home

    @property
    def broken(self) -> dict[int, str]:
        """Edits whose blob is unusable (skipped when the live weights were built)."""
        return self.ws.broken

    def default_hparams(self) -> FTHyperParams:
        return self.ws.default_hparams()  # from the architecture, not the weights

    # ---- queries: no lock, no weights ----------------------------------------------------
    def history(self) -> list[EditInfo]:
        return [EditInfo.from_stored(e) for e in self.ws.store.edits(self.ws.base_id, self.branch)]

    def events(self) -> list[EventInfo]:
        return self.ws.store.events(self.ws.base_id, self.branch)

    def get(self, edit_id: int) -> EditInfo:
        return EditInfo.from_stored(self.ws.store.get(edit_id, self.ws.base_id, self.branch))

    # ---- on the branch's weights -------------------------------------------------------
    def active_ids(self) -> list[int]:
        with self.on_branch() as ws:
            return ws.active_ids()

    def verify(self) -> VerifyReport:
        with self.on_branch() as ws:
            return ws.verify()

    def report(self, request: EditRequest) -> dict:
        with self.on_branch() as ws:
            return ws.report(request)

    def generate(
        self, prompt: str, max_new_tokens: int = 20, base: bool = False, chat: bool = False
    ) -> str:
        with self.on_branch() as ws:
            return ws.generate(prompt, max_new_tokens, base=base, chat=chat)

    def export(self, ids: int | Sequence[int], path: str | Path) -> Path:
        with self.on_branch() as ws:
            return ws.export(ids, path)

    # ---- limited or guarded operations ---------------------------------------------------
    def edit(
        self,
        requests: EditRequest | Sequence[EditRequest],
        hparams: FTHyperParams | None = None,
        callback: Callable[[int, int, float], None] | None = None,
        cancel: threading.Event | None = None,
        neighbours: str | Sequence[str] | None = None,
    ) -> EditInfo:
        """:meth:`Workspace.edit` on this branch; ``cancel`` defaults to this view's flag."""
        if self.limited:
            _rate(self.ws).check(self.session)
        with self.on_branch() as ws:
            cancel = cancel if cancel is not None else self.cancel
            return ws.edit(requests, hparams, callback, cancel=cancel, neighbours=neighbours)

    def import_(self, path) -> EditInfo:
        if self.limited:
            self.ws.limits.check_upload(path)
            _rate(self.ws).check(self.session)
        with self.on_branch() as ws:
            return ws.import_(path)

    def revert(self, edit_id: int) -> OpResult:
        self._own(edit_id, "revert")
        with self.on_branch() as ws:
            return ws.revert(edit_id)

    def reapply(self, edit_id: int) -> OpResult:
        self._own(edit_id, "re-apply")
        with self.on_branch() as ws:
            return ws.reapply(edit_id)

    def checkout(self, version: int) -> list[int]:
        if self.private:
            raise LimitError(
                "checking out a version changes the shared stack: on a shared "
                "deployment only an admin can (use `ftedit checkout` on the store)"
            )
        with self.on_branch() as ws:
            return ws.checkout(version)

    def diff(self, a: int | str, b: int | str) -> dict:
        if self.private and any(str(x).strip().lower().startswith("v") for x in (a, b)):
            raise LimitError(
                "versions hold every visitor's edits: on a shared deployment "
                "compare two edit ids instead"
            )
        with self.on_branch() as ws:
            return ws.diff(a, b)

    def publish(self, edit_id: int, token: str | None) -> EditInfo:
        """Make one of this branch's edits global; needs the admin token."""
        if not is_admin(token):
            raise LimitError(
                "publishing needs the admin token (FTEDIT_ADMIN_TOKEN)"
                if os.environ.get("FTEDIT_ADMIN_TOKEN")
                else "publishing is off: set FTEDIT_ADMIN_TOKEN on the server"
            )
        with self.on_branch() as ws:
            return ws.publish(edit_id)

    def _own(self, edit_id: int, verb: str) -> None:
        edit = self.get(edit_id)  # EditNotFoundError for another visitor's private edit
        if self.private and edit.owner is None:
            raise StoreError(
                f"edit #{edit_id} is published: visitors cannot {verb} it on a "
                "shared deployment (an admin can, from the command line)"
            )
