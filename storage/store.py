"""The store: database rows plus blobs under one home, and the rules of the event log.

Torch-free, so `ftedit log` / `show` / `revert` run without loading a model. The
:class:`ftedit.versioning.workspace.Workspace` adds the model on top and keeps live weights in step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Text, func, or_, select, type_coerce
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError
from sqlalchemy.exc import IntegrityError as RowConflict

from ftedit import paths
from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from ftedit.errors import EditNotFoundError, StoreError
from storage import gc
from storage.blobs import LocalBlobStore, open_blob_store
from storage.db import Sessions, crash_point, damaged, damaged_message, describe, open_engine
from storage.ephemeral import refuse_ephemeral
from storage.models import BaseModelRow, EditRow, EventRow, utcnow
from storage.records import EditInfo, EventInfo, OpResult

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


class Store:
    """Rows and blobs of one home. Writers hold ``file_lock`` (shared by the CLI and the app)."""

    def __init__(
        self,
        home: str | Path | None = None,
        database_url: str | None = None,
        blob_url: str | None = None,
        *,
        ephemeral_ok: bool = False,
    ):
        """``ephemeral_ok``: allow an in-memory database or blob root (tests only; env
        FTEDIT_ALLOW_EPHEMERAL=1 does the same): elsewhere they are refused, since every edit
        would vanish when the process ends."""
        self.home = Path(home) if home is not None else paths.home()
        url = database_url or paths.database_url(self.home)
        blob_url = blob_url or os.environ.get("FTEDIT_BLOB_URL")
        if not (ephemeral_ok or os.environ.get("FTEDIT_ALLOW_EPHEMERAL") == "1"):
            refuse_ephemeral(url, blob_url)
        self.home.mkdir(parents=True, exist_ok=True)
        self.file_lock = FileLock(str(self.home / ".ftedit.lock"))
        try:  # the lock is taken only to migrate: readers (`ftedit log`) never wait on it
            self.engine = open_engine(url, lock=self.file_lock)
        except DatabaseError as e:
            if damaged(e):
                raise StoreError(damaged_message(url, e)) from e
            if not isinstance(e, (OperationalError, InterfaceError)):
                raise
            raise StoreError(  # a server that is down
                f"cannot open the database {describe(url)}: {str(e).strip().splitlines()[0][:200]}"
            ) from e
        # Sessions turn a lost connection (a restarted PostgreSQL) into a StoreError.
        self.session = Sessions(self.engine, url)
        # Blobs: a folder or any fsspec URL (FTEDIT_BLOB_URL; replicas share it), else the home.
        self.blobs = open_blob_store(blob_url) if blob_url else LocalBlobStore(self.home / "blobs")
        self.url, self.id = url, gc.store_id(url)
        self._registered = False  # the root's stores/<id>.json marker (put_blob writes it)

    # ---- base models -------------------------------------------------------------------
    def base_id(self, fingerprint: dict, create: bool = True) -> int | None:
        """Row id of this base model (created on first use unless ``create`` is False)."""
        key = {k: fingerprint[k] for k in ("name", "file_sha256", "dtype")}
        with self.session() as s:
            row = s.scalars(select(BaseModelRow).filter_by(**key)).first()
            if row is None and create:
                row = BaseModelRow(
                    source=fingerprint.get("source", ""),
                    revision=fingerprint.get("revision"),
                    **key,
                )
                s.add(row)
                try:
                    s.commit()
                except RowConflict:  # another replica registered it first: use theirs
                    s.rollback()
                    row = s.scalars(select(BaseModelRow).filter_by(**key)).one()
            return row.id if row is not None else None

    # ---- queries -----------------------------------------------------------------------
    def _edit_query(self, base_id: int | None, branch: str | None = ALL):
        q = select(EditRow, BaseModelRow.name).join(BaseModelRow).order_by(EditRow.id)
        q = visible(q, branch)
        return q if base_id is None else q.where(EditRow.base_model_id == base_id)

    def edits(self, base_id: int | None = None, branch: str | None = ALL) -> list[EditInfo]:
        """Every edit (of one base, or of all; ``branch``: see :func:`visible`), in id order."""
        with self.session() as s:
            q = self._edit_query(base_id, branch)
            return [_info(row, name) for row, name in s.execute(q)]

    def log_json(self, base_id: int | None = None) -> str:
        """A JSON array with one object per edit, in id order: what `ftedit log --json` prints.

        Keys: id, status, created_at, requests, method, origin, steps, seconds, tensor_names,
        blob_sha256, base_model. This path must stay fast over 10,000s of edits, so it reads
        only these columns through Core and splices the stored JSON text into the output
        without decoding it; `get` / `ftedit show` give the full record.
        """
        raw = {c: type_coerce(getattr(EditRow, c), Text) for c in ("requests", "tensor_names")}
        q = (
            select(
                EditRow.id,
                EditRow.status,
                EditRow.created_at,
                EditRow.method,
                EditRow.origin,
                EditRow.steps,
                EditRow.seconds,
                EditRow.blob_sha256,
                BaseModelRow.name,
                raw["requests"],
                raw["tensor_names"],
            )
            .join(BaseModelRow)
            .order_by(EditRow.id)
        )
        if base_id is not None:
            q = q.where(EditRow.base_model_id == base_id)
        dumps = json.dumps
        with self.engine.connect() as conn:
            parts = [
                f'{{"id":{i},"status":{dumps(st)},"created_at":"{at.isoformat()}",'
                f'"method":{dumps(m)},"origin":{dumps(o)},"steps":{n},"seconds":{sec!r},'
                f'"blob_sha256":"{sha}","base_model":{dumps(base)},'
                f'"requests":{reqs},"tensor_names":{names}}}'
                for i, st, at, m, o, n, sec, sha, base, reqs, names in conn.execute(q)
            ]
        return "[" + ",".join(parts) + "]"

    def get(self, edit_id: int, base_id: int | None = None, branch: str | None = ALL) -> EditInfo:
        with self.session() as s:
            q = self._edit_query(base_id, branch).where(EditRow.id == edit_id)
            hit = s.execute(q).first()
        if hit is None:
            raise EditNotFoundError(f"no edit #{edit_id} in this store; `ftedit log` lists them")
        return _info(*hit)

    def events(self, base_id: int | None = None, branch: str | None = ALL) -> list[EventInfo]:
        q = select(EventRow).order_by(EventRow.id)
        if base_id is not None or branch != ALL:
            q = visible(q.join(EditRow), branch)
        if base_id is not None:
            q = q.where(EditRow.base_model_id == base_id)
        with self.session() as s:
            return [_event(e) for e in s.scalars(q)]

    def active_ids(self, base_id: int | None = None, branch: str | None = ALL) -> list[int]:
        q = visible(
            select(EditRow.id).where(EditRow.status == "active").order_by(EditRow.id), branch
        )
        if base_id is not None:
            q = q.where(EditRow.base_model_id == base_id)
        with self.session() as s:
            return list(s.scalars(q))

    def log_position(self) -> tuple[int, int]:
        """(newest event id, number of events): changes whenever any event commits.

        Replicas poll this before each model-touching call. The count is part of it because on
        PostgreSQL ids come from a sequence: a slow transaction can commit an id lower than the
        newest one already seen, which the max alone would miss. Events are never deleted.
        """
        with self.session() as s:
            newest, count = s.execute(select(func.max(EventRow.id), func.count(EventRow.id))).one()
        return newest or 0, count

    def state_at(self, version: int) -> tuple[int, dict[int, str]]:
        """(base id, {edit id: status}) as it was right after event ``version``."""
        with self.session() as s:
            ev = s.get(EventRow, version)
            if ev is None:
                last = s.scalar(select(func.max(EventRow.id)))
                raise StoreError(
                    f"no version v{version}; versions are event ids 1..{last or 0} "
                    "(see `ftedit events`)"
                )
            base = s.get(EditRow, ev.edit_id).base_model_id
            q = (
                select(EventRow.edit_id, EventRow.kind)
                .join(EditRow)
                .where(EditRow.base_model_id == base, EventRow.id <= version)
                .order_by(EventRow.id)
            )
            state: dict[int, str] = {}
            for edit_id, kind in s.execute(q):
                if kind in ACTIVE_AFTER:  # "published" changes who sees it, not its status
                    state[edit_id] = ACTIVE_AFTER[kind]
        return base, state

    def later_sharing(
        self, edit: EditInfo, base_id: int | None, branch: str | None = ALL
    ) -> list[tuple[int, str]]:
        """(id, origin) of the active edits made after ``edit`` that touch any of its tensors
        (trained or imported on top of it). On a visitor's branch only that branch's edits
        count: no other was trained on it."""
        names = set(edit.tensor_names)
        q = visible(
            select(EditRow.id, EditRow.tensor_names, EditRow.origin)
            .where(EditRow.id > edit.id, EditRow.status == "active")
            .order_by(EditRow.id),
            branch,
        )
        if base_id is not None:
            q = q.where(EditRow.base_model_id == base_id)
        with self.session() as s:
            return [(i, origin) for i, tensors, origin in s.execute(q) if names & set(tensors)]

    # ---- writes ------------------------------------------------------------------------
    def add_edit(
        self,
        base_id: int,
        *,
        requests: list[EditRequest],
        hparams: FTHyperParams,
        metrics: dict,
        losses: list[float],
        steps: int,
        seconds: float,
        blob_sha256: str,
        tensor_names: Iterable[str],
        origin: str = "trained",
        note: str | None = None,
        owner: str | None = None,
    ) -> EditInfo:
        """Insert an edit and its created/imported event in one transaction.

        Call only after the blob is durable: a crash before the commit leaves an orphan blob
        (harmless, collectable), never a row without its blob.
        """
        crash_point("before_commit")
        with self.session() as s, s.begin():
            row = EditRow(
                base_model_id=base_id,
                requests=[r.to_dict() for r in requests],
                hparams=hparams.to_dict(),
                method=_method(hparams),
                objective=hparams.objective,
                origin=origin,
                metrics=metrics,
                losses=list(losses),
                steps=steps,
                seconds=seconds,
                blob_sha256=blob_sha256,
                tensor_names=sorted(tensor_names),
                status="active",
                created_at=utcnow(),
                owner=owner,
            )
            s.add(row)
            s.flush()
            crash_point("mid_commit")
            kind = "imported" if origin == "imported" else "created"
            s.add(EventRow(edit_id=row.id, kind=kind, created_at=utcnow(), note=note))
            edit_id = row.id
        return self.get(edit_id)

    def set_metrics(self, edit_id: int, metrics: dict) -> None:
        with self.session() as s, s.begin():
            s.get(EditRow, edit_id).metrics = metrics

    def set_status(self, changes: dict[int, str], note: str | None = None) -> list[EventInfo]:
        """Move edits to new statuses, one event each, in one transaction (ids in order)."""
        out = []
        with self.session() as s, s.begin():
            for edit_id in sorted(changes):
                # Row lock (PostgreSQL; SQLite writers are serialised already), taken in id
                # order: of two replicas changing one edit at once, the second sees the first's
                # status and refuses instead of logging a second, contradicting event.
                row = s.get(EditRow, edit_id, with_for_update=True)
                if row.status == changes[edit_id]:
                    raise StoreError(
                        f"edit #{edit_id} is already {changes[edit_id]} (changed "
                        "by another process just now); nothing was changed"
                    )
                row.status = changes[edit_id]
                kind = "reverted" if changes[edit_id] == "reverted" else "reapplied"
                ev = EventRow(edit_id=edit_id, kind=kind, created_at=utcnow(), note=note)
                s.add(ev)
                s.flush()
                out.append(_event(ev))
        return out

    # ---- plans: checks shared by the CLI (store only) and the Workspace (store + model) ----
    def plan_revert(
        self, edit_id: int, base_id: int | None = None, branch: str | None = ALL
    ) -> tuple[EditInfo, str | None]:
        edit = self.get(edit_id, base_id, branch)
        if not edit.active:
            raise StoreError(
                f"edit #{edit_id} is already reverted; `ftedit reapply {edit_id}` brings it back"
            )
        later = self.later_sharing(edit, base_id, branch)
        warning = None
        if later:
            trained = [i for i, origin in later if origin != "imported"]
            imported = [i for i, origin in later if origin == "imported"]
            parts = []
            if trained:
                parts.append(f"{_ids('edit', trained)} {_was(trained)} trained on top of it")
            if imported:  # an imported edit was trained elsewhere, but stacks on the same tensors
                parts.append(
                    f"{_ids('imported edit', imported)} {_was(imported)} applied after it "
                    "to the same tensors"
                )
            warning = "; ".join(parts) + "; removing it is exact arithmetic, not 'never made'"
        return edit, warning

    def plan_reapply(
        self, edit_id: int, base_id: int | None = None, check_blob: bool = True
    ) -> EditInfo:
        edit = self.get(edit_id, base_id)
        if edit.active:
            raise StoreError(f"edit #{edit_id} is already active")
        if check_blob:  # refuse a corrupt blob now (the Workspace checks when it reads it)
            self.blobs.get(edit.blob_sha256, what=f"edit #{edit_id}")
        return edit

    def plan_checkout(self, version: int, base_id: int | None = None) -> dict[int, str]:
        """{edit id: new status} for every edit whose status differs from version ``version``."""
        base, state = self.state_at(version)
        if base_id is not None and base != base_id:
            raise StoreError(f"version v{version} belongs to another base model")
        return {
            e.id: state.get(e.id, "reverted")
            for e in self.edits(base)
            if state.get(e.id, "reverted") != e.status
        }

    # ---- store-only operations (CLI; the Workspace wraps these with a model rebuild) ----
    def revert(self, edit_id: int) -> OpResult:
        with self.file_lock:
            _, warning = self.plan_revert(edit_id)
            self.set_status({edit_id: "reverted"})
        return OpResult(self.get(edit_id), warning)

    def reapply(self, edit_id: int) -> OpResult:
        with self.file_lock:
            self.plan_reapply(edit_id)
            self.set_status({edit_id: "active"})
        return OpResult(self.get(edit_id), None)

    def checkout(self, version: int) -> list[int]:
        with self.file_lock:
            changes = self.plan_checkout(version)
            for edit_id, status in changes.items():
                if status == "active":
                    self.plan_reapply(edit_id)
            self.set_status(changes, note=f"checkout v{version}")
            base, _ = self.state_at(version)
        return self.active_ids(base)

    # ---- blobs and housekeeping ---------------------------------------------------------
    def referenced_blobs(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(EditRow.blob_sha256).distinct()))

    def orphans(self) -> list[str]:
        """Blobs no database using the blob root refers to (an edit killed before its
        commit), and temp leftovers (see :mod:`storage.gc`)."""
        return gc.orphans(self)

    def collect_orphans(self, grace_seconds: float = gc.DEFAULT_GRACE_SECONDS) -> list[str]:
        """Delete orphans older than ``grace_seconds``; returns what was removed."""
        return gc.collect(self, grace_seconds)[0]

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The locks a blob writer holds until its row commits: the home's, then the blob
        root's (which gc also takes, so it never collects a blob about to be referenced)."""
        with self.file_lock, self.blobs.lock():
            yield

    def put_blob(self, data: bytes) -> str:
        """Store a blob (call inside :meth:`writing`), registering this store in the root."""
        if not self._registered:
            gc.register(self)
            self._registered = True
        return self.blobs.put(data)

    def integrity_problems(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` of the database file ([] when sound or not SQLite):
        a damaged index page passes every query but the INSERT that needs it."""
        from storage import fastlog
        from storage.recover import quick_check

        path = fastlog.sqlite_path(self.url)
        return quick_check(path) if path is not None else []

    def status_problems(self, base_id: int | None = None) -> list[str]:
        """Edits whose status column disagrees with their newest event."""
        last: dict[int, str] = {}
        for ev in self.events(base_id):
            if ev.kind in ACTIVE_AFTER:
                last[ev.edit_id] = ACTIVE_AFTER[ev.kind]
        return [
            f"edit #{e.id}: status {e.status!r} but its log says {last.get(e.id)!r}"
            for e in self.edits(base_id)
            if last.get(e.id) != e.status
        ]


def visible(q, branch: str | None):
    """Restrict an edits query to a branch: ``ALL`` every edit; None the published ones; a
    visitor id the published ones plus that visitor's own."""
    if branch == ALL:
        return q
    if branch is None:
        return q.where(EditRow.owner.is_(None))
    return q.where(or_(EditRow.owner.is_(None), EditRow.owner == branch))


def _method(hp: FTHyperParams) -> str:
    return "FT" if hp.norm_constraint is None else "FT-L"


def _info(row: EditRow, base_name: str = "") -> EditInfo:
    return EditInfo(
        id=row.id,
        requests=[EditRequest.from_dict(r) for r in row.requests],
        hparams=FTHyperParams.from_dict(row.hparams),
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


def _event(e: EventRow) -> EventInfo:
    return EventInfo(id=e.id, edit_id=e.edit_id, kind=e.kind, created_at=e.created_at, note=e.note)


def _ids(noun: str, ids: list[int]) -> str:
    """'edit #3' / 'edits #3, #5' naming up to a dozen: past that the message buries the point."""
    shown = ", ".join(f"#{i}" for i in ids[:12])
    more = f" and {len(ids) - 12} more" if len(ids) > 12 else ""
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}{more}"


def _was(ids: list[int]) -> str:
    return "were" if len(ids) > 1 else "was"
