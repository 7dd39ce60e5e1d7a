"""SQLAlchemy 2 models: base models, edits, and the append-only events log.

No dialect-specific types: the same models run on SQLite and PostgreSQL
(dialect details live in :mod:`storage.db`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    SQLite stores no offset and hands back naive values; we store UTC and re-attach it on read,
    so callers always see aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC value")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        elif value is not None:
            # PostgreSQL hands back the session's zone (e.g. ZoneInfo("Etc/UTC") or the
            # server's local zone): normalise so every backend returns timezone.utc itself.
            value = value.astimezone(timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class BaseModelRow(Base):
    """A base model edits were made for (the Fingerprint of ``ftedit.core.models``)."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str | None] = mapped_column(String(255), nullable=True)
    file_sha256: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_base_models_identity", "name", "file_sha256", "dtype", unique=True),
    )


class EditRow(Base):
    """One edit: what was asked, how it was trained, and the blob holding its deltas.

    ``status`` is the state implied by the newest event of this edit; it is written in the
    same transaction as that event, so queries need not replay the log.
    """

    __tablename__ = "edits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    requests: Mapped[list] = mapped_column(JSON)
    hparams: Mapped[dict] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32))  # "FT-L" (box constraint) or "FT"
    objective: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16), default="trained")  # trained | imported
    metrics: Mapped[dict] = mapped_column(JSON)
    losses: Mapped[list] = mapped_column(JSON)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    tensor_names: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The visitor branch of an unpublished edit on a shared deployment; NULL = published
    # (seen by everyone). Single-user stores only ever hold NULL.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class EventRow(Base):
    """Append-only audit log; rows are never updated or deleted."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
