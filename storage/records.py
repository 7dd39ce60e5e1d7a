"""Plain value types the store hands out (no SQLAlchemy or torch objects leak to callers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest


@dataclass(frozen=True)
class EditInfo:
    """One stored edit as the CLI and the app see it."""

    id: int
    requests: list[EditRequest]
    hparams: FTHyperParams
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

    @property
    def request(self) -> EditRequest:
        return self.requests[0]

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict:
        """JSON-safe dict (datetimes as ISO 8601 strings)."""
        return {
            "id": self.id,
            "request": self.request.to_dict(),
            "requests": [r.to_dict() for r in self.requests],
            "hparams": self.hparams.to_dict(),
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

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "edit_id": self.edit_id,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
        }


@dataclass(frozen=True)
class OpResult:
    """Outcome of revert / reapply: the edit after the change and an optional warning."""

    edit: EditInfo
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"edit": self.edit.to_dict(), "warning": self.warning}


@dataclass
class VerifyReport:
    """What ``verify`` found. ``ok`` is False when any problem was found; orphan blobs
    (written by an edit that never committed) are listed but are not problems."""

    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    checked_edits: int = 0
    checked_tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "orphans": list(self.orphans),
            "checked_edits": self.checked_edits,
            "checked_tensors": self.checked_tensors,
        }
