"""Typed views of stored edits, decoded leniently so that history outlives today's rules.

Storage keeps requests and hyperparameters as the JSON dicts they were saved with. Decoding
here never refuses an old row: unknown hyperparameters are kept (and shown), missing ones take
today's defaults, and values today's validation would refuse are shown as stored. Renaming or
adding a hyperparameter therefore never breaks ``ftedit log`` / ``show`` or the History tab.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from ftedit.errors import FteditError
from storage.records import EventInfo, OpResult, StoredEdit

__all__ = ["EditInfo", "EventInfo", "OpResult", "VerifyReport", "decode_hparams", "method_of"]
_HP_FIELDS = {f.name for f in dataclasses.fields(FTHyperParams)}


def method_of(hp: FTHyperParams) -> str:
    """ROME's name for the method: FT-L with an L-inf box, plain FT without."""
    return "FT" if hp.norm_constraint is None else "FT-L"


def decode_hparams(stored: dict) -> tuple[FTHyperParams, dict]:
    """(the known hyperparameters, defaults for missing ones; the unknown ones, as stored)."""
    known = {k: v for k, v in stored.items() if k in _HP_FIELDS}
    extra = {k: v for k, v in stored.items() if k not in _HP_FIELDS}
    try:
        return FTHyperParams(**known), extra
    except (FteditError, TypeError, ValueError):
        # A value today's validation refuses: show the edit as it was made, unvalidated.
        hp = object.__new__(FTHyperParams)
        for f in dataclasses.fields(FTHyperParams):
            default = f.default if f.default is not dataclasses.MISSING else None
            object.__setattr__(hp, f.name, known.get(f.name, default))
        return hp, extra


def decode_request(stored: dict) -> EditRequest:
    """A stored request; one today's checks refuse is shown as it was saved."""
    try:
        return EditRequest.from_dict(stored)
    except FteditError:
        req = object.__new__(EditRequest)
        for f in dataclasses.fields(EditRequest):
            value = stored.get(f.name) if isinstance(stored, dict) else None
            if value is None and f.default is dataclasses.MISSING:
                value = ""  # a required field: shown empty rather than refusing the row
            object.__setattr__(req, f.name, None if value is None else str(value))
        return req


@dataclass(frozen=True)
class EditInfo(StoredEdit):
    """One stored edit as the CLI and the app see it: the row with its requests and
    hyperparameters decoded (every other field as stored)."""

    requests: list[EditRequest]
    hparams: FTHyperParams
    # Stored hyperparameters this version of ftedit does not know (kept and shown).
    hparams_extra: dict = field(default_factory=dict)

    @classmethod
    def from_stored(cls, row: StoredEdit) -> EditInfo:
        hp, extra = decode_hparams(row.hparams)
        fields = {f.name: getattr(row, f.name) for f in dataclasses.fields(StoredEdit)}
        fields.update(
            requests=[decode_request(r) for r in row.requests], hparams=hp, hparams_extra=extra
        )
        return cls(**fields)

    @property
    def request(self) -> EditRequest:
        return self.requests[0]

    def hparams_dict(self) -> dict:
        """The hyperparameters as JSON: today's fields (defaults filled in) plus unknown ones."""
        return {**self.hparams.to_dict(), **self.hparams_extra}

    def to_dict(self) -> dict:
        """JSON-safe dict (datetimes as ISO 8601 strings)."""
        requests = [r.to_dict() for r in self.requests]
        return {
            **super().to_dict(),
            "request": requests[0],
            "requests": requests,
            "hparams": self.hparams_dict(),
        }


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
