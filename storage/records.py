"""Plain value types the store hands out (no SQLAlchemy or torch objects leak to callers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar


@dataclass(frozen=True)
class StoredEdit:
    """One edit row as stored. Requests and hyperparameters stay the JSON dicts they were
    saved as: storage never re-validates history with today's rules (ftedit.versioning.records
    decodes them, leniently, for the code that needs typed values)."""

    id: int
    requests: list[dict]
    hparams: dict
    status: str  # "active" | "reverted"
    created_at: datetime  # aware, UTC
    steps: int
    seconds: float
    losses: list[float]
    metrics: dict  # {"before": [rewrite_report per request], "after": [...]}
    blob_sha256: str
    tensor_names: list[str]
    method: str = "FT-L"
    objective: str = "prompt_last"
    origin: str = "trained"  # trained | imported
    base_model: str = ""
    owner: str | None = None  # visitor branch of an unpublished edit; None = published

    @classmethod
    def from_row(cls, row, base_name: str = "") -> StoredEdit:
        """From a ``storage.models.EditRow`` (and its base model's name)."""
        return cls(
            id=row.id,
            requests=row.requests,
            hparams=row.hparams,
            status=row.status,
            created_at=row.created_at,
            steps=row.steps,
            seconds=row.seconds,
            losses=row.losses,
            metrics=row.metrics,
            blob_sha256=row.blob_sha256,
            tensor_names=row.tensor_names,
            method=row.method,
            objective=row.objective,
            origin=row.origin,
            base_model=base_name,
            owner=row.owner,
        )

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict:
        """JSON-safe dict (datetimes as ISO 8601 strings), the stored JSON as it was saved."""
        return {
            "id": self.id,
            "request": self.requests[0] if self.requests else None,
            "requests": list(self.requests),
            "hparams": self.hparams,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "steps": self.steps,
            "seconds": self.seconds,
            "losses": list(self.losses),
            "metrics": self.metrics,
            "blob_sha256": self.blob_sha256,
            "tensor_names": list(self.tensor_names),
            "method": self.method,
            "objective": self.objective,
            "origin": self.origin,
            "base_model": self.base_model,
            "owner": self.owner,
        }


@dataclass(frozen=True)
class EventInfo:
    """One row of the append-only log; its id is a version number ("v<id>")."""

    id: int
    edit_id: int
    kind: str  # created | reverted | reapplied | imported
    created_at: datetime
    note: str | None = None

    @classmethod
    def from_row(cls, e) -> EventInfo:
        """From a ``storage.models.EventRow``."""
        return cls(id=e.id, edit_id=e.edit_id, kind=e.kind, created_at=e.created_at, note=e.note)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "edit_id": self.edit_id,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
        }


E = TypeVar("E")


@dataclass(frozen=True)
class OpResult(Generic[E]):
    """Outcome of revert / reapply: the edit after the change and an optional warning."""

    edit: E
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"edit": self.edit.to_dict(), "warning": self.warning}
