"""The rules of the event log that need no database connection: the status each event kind
leaves an edit in, branch visibility, version numbers, and how refusals name edits."""

from __future__ import annotations

from sqlalchemy import or_

from ftedit.errors import StoreError
from storage.models import EditRow

# Branch filter meaning "every edit, published or not" (single-user stores, the CLI, admins).
# Owners are visitor session ids, which never contain "*".
ALL = "*"
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


def visible(q, branch: str | None):
    """Restrict an edits query to a branch: ``ALL`` every edit; None the published ones; a
    visitor id the published ones plus that visitor's own."""
    if branch == ALL:
        return q
    if branch is None:
        return q.where(EditRow.owner.is_(None))
    return q.where(or_(EditRow.owner.is_(None), EditRow.owner == branch))


def _ids(noun: str, ids: list[int]) -> str:
    """'edit #3' / 'edits #3, #5' naming up to a dozen: past that the message buries the point."""
    shown = ", ".join(f"#{i}" for i in ids[:12])
    more = f" and {len(ids) - 12} more" if len(ids) > 12 else ""
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}{more}"


def _was(ids: list[int]) -> str:
    return "were" if len(ids) > 1 else "was"
