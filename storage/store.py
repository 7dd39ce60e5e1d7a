"""The store: database rows plus blobs under one home, and the rules of the event log.

Torch-free, so `ftedit log` / `show` / `revert` run without loading a model. The
:class:`ftedit.versioning.workspace.Workspace` adds the model on top and keeps live weights in step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError
from sqlalchemy.exc import IntegrityError as RowConflict

from ftedit.errors import EditNotFoundError, StoreError
from storage import gc
from storage.blobs import LocalBlobStore, open_blob_store
from storage.db import Sessions, crash_point, damaged, damaged_message, describe, open_engine
from storage.ephemeral import refuse_ephemeral
from storage.models import BaseModelRow, EditRow, EventRow, utcnow
from storage.records import EventInfo, OpResult, StoredEdit
from storage.rules import ACTIVE_AFTER, Branch, _ids, _was, version_number, visible

__all__ = ["Branch", "Store", "crash_point", "version_number", "visible"]


class Store:
    """Rows and blobs of one home. Writers hold ``file_lock`` (shared by the CLI and the app)."""

    def __init__(
        self,
        home: str | Path,
        database_url: str | None = None,
        blob_url: str | None = None,
        *,
        ephemeral_ok: bool = False,
    ):
        """``ephemeral_ok``: allow an in-memory database or blob root (tests only; env
        FTEDIT_ALLOW_EPHEMERAL=1 does the same): elsewhere they are refused, since every edit
        would vanish when the process ends. ``home`` holds the file lock (and the SQLite
        database and blobs unless ``database_url`` / ``blob_url`` say otherwise). The
        environment (FTEDIT_HOME, FTEDIT_DATABASE_URL, FTEDIT_BLOB_URL) is read at the edge,
        :func:`ftedit.paths.store_location`: ``Store(*store_location(home))``."""
        self.home = Path(home)
        url = database_url or f"sqlite:///{self.home / 'ftedit.db'}"
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
        # Blobs: a folder or any fsspec URL (replicas share it), else the home.
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
    def _edit_query(self, base_id: int | None, branch: Branch = Branch.ALL):
        q = select(EditRow, BaseModelRow.name).join(BaseModelRow).order_by(EditRow.id)
        q = visible(q, branch)
        return q if base_id is None else q.where(EditRow.base_model_id == base_id)

    def edits(self, base_id: int | None = None, branch: Branch = Branch.ALL) -> list[StoredEdit]:
        """Every edit (of one base, or of all; ``branch``: see :func:`visible`), in id order."""
        with self.session() as s:
            q = self._edit_query(base_id, branch)
            return [StoredEdit.from_row(row, name) for row, name in s.execute(q)]

    def log_json(self, base_id: int | None = None) -> str:
        """A JSON array with one object per edit, in id order: what `ftedit log --json` prints.

        Keys: id, status, created_at, requests, method, origin, steps, seconds, tensor_names,
        blob_sha256, base_model. This path must stay fast over 10,000s of edits, so it reads
        only these columns through Core and splices the stored JSON text into the output
        without decoding it; `get` / `ftedit show` give the full record.
        """
        from storage.fastlog import log_json_sqlalchemy

        return log_json_sqlalchemy(self.engine, base_id)

    def get(
        self, edit_id: int, base_id: int | None = None, branch: Branch = Branch.ALL
    ) -> StoredEdit:
        with self.session() as s:
            q = self._edit_query(base_id, branch).where(EditRow.id == edit_id)
            hit = s.execute(q).first()
        if hit is None:
            raise EditNotFoundError(f"no edit #{edit_id} in this store; `ftedit log` lists them")
        return StoredEdit.from_row(*hit)

    def events(self, base_id: int | None = None, branch: Branch = Branch.ALL) -> list[EventInfo]:
        q = select(EventRow).order_by(EventRow.id)
        if base_id is not None or not branch.everything:
            q = visible(q.join(EditRow), branch)
        if base_id is not None:
            q = q.where(EditRow.base_model_id == base_id)
        with self.session() as s:
            return [EventInfo.from_row(e) for e in s.scalars(q)]

    def active_ids(self, base_id: int | None = None, branch: Branch = Branch.ALL) -> list[int]:
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
        self, edit: StoredEdit, base_id: int | None, branch: Branch = Branch.ALL
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
        requests: list[dict],
        hparams: dict,
        method: str,
        objective: str,
        metrics: dict,
        losses: list[float],
        steps: int,
        seconds: float,
        blob_sha256: str,
        tensor_names: Iterable[str],
        origin: str = "trained",
        note: str | None = None,
        owner: str | None = None,
    ) -> StoredEdit:
        """Insert an edit and its created/imported event in one transaction.

        Call only after the blob is durable: a crash before the commit leaves an orphan blob
        (harmless, collectable), never a row without its blob.
        """
        crash_point("before_commit")
        with self.session() as s, s.begin():
            row = EditRow(
                base_model_id=base_id,
                requests=list(requests),
                hparams=dict(hparams),
                method=method,
                objective=objective,
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
                out.append(EventInfo.from_row(ev))
        return out

    # ---- plans: checks shared by the CLI (store only) and the Workspace (store + model) ----
    def plan_revert(
        self, edit_id: int, base_id: int | None = None, branch: Branch = Branch.ALL
    ) -> tuple[StoredEdit, str | None]:
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
    ) -> StoredEdit:
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
        from storage.fastlog import quick_check, sqlite_path

        path = sqlite_path(self.url)
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
