"""The rules of the event log that need no database connection: the status each event kind
leaves an edit in, branch visibility, version numbers, and how refusals name edits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy import or_

from ftedit.errors import StoreError
from storage.models import EditRow


@dataclass(frozen=True)
class Branch:
    """Which edits a query, or the live weights, follow. ``edits.owner`` holds a visitor id
    (that visitor's private edit) or NULL (published); a branch is one of:

    - ``Branch.ALL``: every edit, published or not (one user, the CLI, an admin);
    - ``Branch.PUBLISHED``: the shared stack only;
    - ``Branch.of(visitor)``: the published edits plus that visitor's own.
    """

    visitor: str | None = None
    everything: bool = False
    ALL: ClassVar[Branch]
    PUBLISHED: ClassVar[Branch]

    @classmethod
    def of(cls, visitor: str) -> Branch:
        if not visitor:
            raise StoreError("a visitor branch needs the visitor's session id")
        return cls(visitor=str(visitor))

    @property
    def private(self) -> bool:
        """A visitor's branch (their edits are theirs until published)."""
        return self.visitor is not None

    @property
    def owner(self) -> str | None:
        """``edits.owner`` of an edit made on this branch (None: published)."""
        return self.visitor


Branch.ALL = Branch(everything=True)
Branch.PUBLISHED = Branch()
ACTIVE_AFTER = {
    "created": "active",
    "imported": "active",
    "reapplied": "active",
    "reverted": "reverted",
}


def version_number(version: int | str) -> int:
    """A version (an event id) from ``12`` or ``"v12"``."""
    text = str(version).strip().lower().removeprefix("v")
    if not text.isdigit():
        raise StoreError(f"a version is an event id like 12 or 'v12', got {version!r}")
    return int(text)


def visible(q, branch: Branch):
    """Restrict an edits query to ``branch`` (see :class:`Branch`)."""
    if branch.everything:
        return q
    if branch.visitor is None:
        return q.where(EditRow.owner.is_(None))
    return q.where(or_(EditRow.owner.is_(None), EditRow.owner == branch.visitor))


def _ids(noun: str, ids: list[int]) -> str:
    """'edit #3' / 'edits #3, #5' naming up to a dozen: past that the message buries the point."""
    shown = ", ".join(f"#{i}" for i in ids[:12])
    more = f" and {len(ids) - 12} more" if len(ids) > 12 else ""
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}{more}"


def _was(ids: list[int]) -> str:
    return "were" if len(ids) > 1 else "was"
