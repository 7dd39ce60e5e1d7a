"""Publishing: a visitor's private edit (``edits.owner``) joins the shared stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftedit.errors import EditNotFoundError, StoreError
from storage.models import EditRow, EventRow, utcnow
from storage.records import EventInfo

if TYPE_CHECKING:
    from storage.store import Store


def publish(store: Store, edit_id: int) -> EventInfo:
    """Clear the edit's owner and log a "published" event, in one transaction.

    The row is locked (PostgreSQL) so two admins publishing at once log one event, not two.
    Publishing changes who sees the edit, never its status or its deltas.
    """
    with store.session() as s, s.begin():
        row = s.get(EditRow, edit_id, with_for_update=True)
        if row is None:
            raise EditNotFoundError(f"no edit #{edit_id} in this store")
        if row.owner is None:
            raise StoreError(f"edit #{edit_id} is already published")
        ev = EventRow(
            edit_id=edit_id,
            kind="published",
            created_at=utcnow(),
            note=f"from visitor {row.owner[:8]}",
        )
        row.owner = None
        s.add(ev)
        s.flush()
        return EventInfo.from_row(ev)
