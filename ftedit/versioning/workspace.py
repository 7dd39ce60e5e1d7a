"""Workspace: one model plus one store, kept in step by DESIGN.md's invariant.

For every tensor an edit touches, ``live = compose(base, deltas of the ACTIVE edits in id
order)``, kept by :class:`ftedit.core.live.LiveWeights` (``self.live``): revert / reapply /
checkout / a branch switch call its ``set_active`` on only the tensors involved and never
reload the model. Every public method holds ``self.lock``; every store write also holds
the home's file lock (the CLI and the app may share a home) and re-reads the active set first.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ftedit.core import neighbours as nb
from ftedit.core.deltas import Deltas
from ftedit.core.ft import compute_deltas, warm_caches
from ftedit.core.hparams import FTHyperParams
from ftedit.core.live import LiveWeights
from ftedit.core.metrics import complete, rewrite_report
from ftedit.core.models import LoadedModel, default_hparams, load_model, tensor_sha256
from ftedit.core.requests import EditRequest
from ftedit.errors import Cancelled, EditNotFoundError, IntegrityError
from ftedit.paths import store_location
from ftedit.versioning import compare, transfer
from ftedit.versioning.limits import Limits, cancellable, check_steps
from ftedit.versioning.records import EditInfo, EventInfo, OpResult, VerifyReport, method_of
from ftedit.versioning.stored import other_dtype_notice, read_deltas, stored
from storage import editfile
from storage.records import StoredEdit
from storage.store import Branch, Store, crash_point, version_number

__all__ = ["EditInfo", "EventInfo", "OpResult", "VerifyReport", "Workspace"]
log = logging.getLogger(__name__)
# The key of an edit's deltas between training and its row's commit: above every id, so that
# it sits on top of the stack exactly where its id will.
_PENDING = 2**62


class Workspace:
    """A model whose weights follow the store: edit, revert, reapply, checkout, diff, verify."""

    def __init__(
        self,
        model: str | None = None,
        home: str | Path | None = None,
        *,
        database_url: str | None = None,
        loaded: LoadedModel | None = None,
        dtype: str | None = None,
        device: str | None = None,
        blob_url: str | None = None,
    ):
        self.lock = threading.RLock()
        self.loaded = loaded or load_model(model, dtype=dtype, device=device)
        self.model, self.tok = self.loaded.model, self.loaded.tok
        self.fingerprint = self.loaded.fingerprint
        self.live = LiveWeights(self.model)  # base copies, deltas read (sha256-checked), active ids
        self.store = Store(*store_location(home, database_url, blob_url))  # else the environment's
        self.home = self.store.home
        self._base_id = self.store.base_id(self.fingerprint.to_dict())
        # Edits are kept per (model, dtype): say so when this dtype hides some, not zero edits.
        self.dtype_notice = other_dtype_notice(self.store, self.fingerprint.to_dict())
        if self.dtype_notice:  # the CLI and the app print it; logged for library callers
            log.info("%s", self.dtype_notice)
        self._base_sha: dict[str, str] = {}
        self.broken: dict[int, str] = {}  # edit id -> why its blob cannot be used
        self._db_active: list[int] = []  # active ids as the database says (live: minus broken)
        self._touched: dict[int, list[str]] = {}  # edit id -> tensor names (immutable per edit)
        self._seen: tuple | None = None  # store.log_position() the live weights follow
        self.limits = Limits.from_env()  # deployment limits (FTEDIT_MAX_*; none by default)
        # The branch the live weights follow (storage.rules.Branch): every edit (one user, the
        # CLI), the published stack, or a visitor's (published + their own; use_branch).
        self.branch: Branch = Branch.ALL
        with self.lock:
            self._sync()  # the replay: live weights = base + active edits

    @property
    def base_id(self) -> int:
        """The store's row id of this model (edits of other base models are not this one's)."""
        return self._base_id

    # ---- the invariant (self.live) ---------------------------------------------------------
    def base_sha(self, name: str) -> str:
        if name not in self._base_sha:
            self.live.keep_base([name])
            self._base_sha[name] = tensor_sha256(self.live.base[name])
        return self._base_sha[name]

    def read_deltas(self, edit: StoredEdit) -> Deltas:
        """An edit's deltas straight from its blob: sha256, names and base tensors checked."""
        return read_deltas(self.store, edit, self.base_sha)

    def deltas_of(self, edit: StoredEdit) -> Deltas:
        """An edit's deltas, read from its blob once (then kept in ``live.deltas``)."""
        if edit.id not in self.live.deltas:
            self.live.deltas[edit.id] = self.read_deltas(edit)
        return self.live.deltas[edit.id]

    def _names(self, ids: Iterable[int]) -> set[str]:
        """Tensors the edits ``ids`` touch (from their rows: also works for broken blobs)."""
        ids = set(ids)
        if not ids <= set(self._touched):
            self._touched.update({e.id: e.tensor_names for e in self.store.edits(self._base_id)})
        return {n for i in ids for n in self._touched[i]}

    def _sync(self) -> None:
        """Follow the database: another process (a replica, the CLI) may have changed it.

        One cheap query when nothing happened (the log's position); otherwise re-read the
        active set and recompute only the tensors of edits that entered or left it (edits
        whose blob is unusable are skipped and listed in ``broken``).
        """
        pos = (*self.store.log_position(), self.branch)  # read first: later events re-sync
        if pos == self._seen:
            return
        ids = self.store.active_ids(self._base_id, self.branch)
        missing = [i for i in ids if i not in self.live.deltas and i not in self.broken]
        rows = {e.id: e for e in self.store.edits(self._base_id)} if missing else {}
        for i in missing:
            if i not in rows:
                raise EditNotFoundError(f"no edit #{i} for {self.fingerprint.name} in this store")
            try:
                self.deltas_of(rows[i])
            except IntegrityError as e:
                self.broken[i] = str(e)
                log.warning("skipping %s", e)
        usable = [i for i in ids if i not in self.broken]
        changed = set(usable) ^ set(self.live.active)
        self.live.set_active(usable, self._names(changed | set(self.broken) & set(ids)))
        self._db_active, self._seen = ids, pos

    def _commit_status(self, changes: dict[int, str], note: str | None = None) -> None:
        """Rebuild the live weights for ``changes``, then record them; undo on failure."""
        old = list(self.live.active)
        new_db = sorted(
            set(self._db_active) - {i for i, s in changes.items() if s != "active"}
            | {i for i, s in changes.items() if s == "active"}
        )
        names = self._names(changes)
        self.live.set_active([i for i in new_db if i not in self.broken], names)
        try:
            self.store.set_status(changes, note=note)
        except BaseException:
            self.live.set_active(old, names)
            raise
        self._db_active = new_db

    # ---- edits ----------------------------------------------------------------------------
    def default_hparams(self) -> FTHyperParams:
        """The preset for this model's architecture (:func:`ftedit.core.models.default_hparams`)."""
        return default_hparams(self.model)

    def warm(self) -> None:
        """Compute what the next edit with the default preset reads from the live weights
        (:func:`ftedit.core.ft.warm_caches`), under the lock: an edit asked meanwhile waits."""
        with self.lock:
            self._sync()
            warm_caches(self.model, self.tok, self.default_hparams())

    def edit(
        self,
        requests: EditRequest | Sequence[EditRequest],
        hparams: FTHyperParams | None = None,
        callback: Callable[[int, int, float], None] | None = None,
        cancel: threading.Event | None = None,
        neighbours: str | Sequence[str] | None = None,
    ) -> EditInfo:
        """Train an edit on the live stack, store it (blob, then row), and make it live.

        ``cancel``: once set (by the app when the visitor leaves), training stops after
        the current step with :class:`Cancelled`; nothing is stored, the lock is released.
        ``neighbours``: subjects to check for side effects (default: the nearest of the keep
        pool; ftedit/core/neighbours.py); the rows are stored in the metrics under "neighbours"."""
        requests = [requests] if isinstance(requests, EditRequest) else list(requests)
        hp = hparams or self.default_hparams()
        check_steps(hp, self.limits.max_steps)
        self.limits.check_edit(requests, self.tok, hp)  # refused before anything changes
        callback = cancellable(self.limits.timed(callback), cancel)  # timeout: stops too
        with self.lock:
            if cancel is not None and cancel.is_set():  # given up while waiting for the lock
                raise Cancelled("the edit was cancelled before it started; nothing was changed")
            self._sync()
            before = [rewrite_report(self.model, self.tok, r) for r in requests]
            near = nb.measure(
                self.model, self.tok, nb.pick(self.model, self.tok, requests, hp, neighbours)
            )
            prior = self._live_requests() if hp.keep_prior_edits else ()
            result = compute_deltas(self.model, self.tok, requests, hp, callback, prior)
            names = sorted(result.deltas)
            meta = self._metadata(requests, hp, names)
            deltas, data = stored(result.deltas, hp.store_as, meta)  # compact: applied = stored
            return self._add(
                deltas,
                data,
                requests,
                hp,
                before,
                origin="trained",
                losses=result.losses,
                steps=result.steps,
                seconds=result.seconds,
                neighbours=near,
            )

    def _metadata(
        self, requests: Sequence[EditRequest], hp: FTHyperParams, names: Iterable[str]
    ) -> dict[str, str]:
        return editfile.edit_metadata(
            base=self.fingerprint.to_dict(),
            base_tensors={n: self.base_sha(n) for n in names},
            requests=[r.to_dict() for r in requests],
            hparams=hp.to_dict(),
        )

    def _add(
        self,
        deltas: Deltas,
        data: bytes,
        requests: list[EditRequest],
        hp: FTHyperParams,
        before: list[dict],
        *,
        origin: str,
        losses=(),
        steps=0,
        seconds=0.0,
        neighbours: list[dict] | None = None,
    ) -> EditInfo:
        """Make ``deltas`` live on top of the stack, score it, then persist it durably."""
        names = sorted(deltas)
        old = list(self.live.active)
        self.live.deltas[_PENDING] = deltas
        self.live.set_active([*old, _PENDING], names)  # tentative: on top, as its id will be
        try:
            after = [rewrite_report(self.model, self.tok, r) for r in requests]
            metrics = {"before": before, "after": after}
            if neighbours is not None:
                metrics["neighbours"] = nb.compare(
                    neighbours, nb.measure(self.model, self.tok, neighbours)
                )
            with self.store.writing():  # home + blob root locks (gc waits for the commit)
                sha = self.store.put_blob(data)  # durable before any row points at it
                crash_point("after_blob")
                info = self.store.add_edit(
                    self._base_id,
                    requests=[r.to_dict() for r in requests],
                    hparams=hp.to_dict(),
                    method=method_of(hp),
                    objective=hp.objective,
                    losses=list(losses),
                    metrics=metrics,
                    steps=steps,
                    seconds=seconds,
                    blob_sha256=sha,
                    tensor_names=names,
                    origin=origin,
                    owner=self.branch.owner,
                )  # private on a branch
        except BaseException:
            self.live.set_active(old, names)
            raise
        finally:
            self.live.deltas.pop(_PENDING, None)
        self.live.deltas[info.id] = deltas
        self.live.active = sorted(info.id if i == _PENDING else i for i in self.live.active)
        self._touched[info.id] = names  # else _names() would reload every row to learn them
        self._sync()  # exact final value (also picks up edits other processes committed)
        return EditInfo.from_stored(info)

    def revert(self, edit_id: int) -> OpResult:
        """Remove an edit from the live stack (exact); warns if later edits were built on it."""
        with self.lock, self.store.file_lock:
            self._sync()
            # On a branch another visitor's private edit does not exist, nor is it named in
            # the warning (it was never trained on this branch's edits).
            edit, warning = self.store.plan_revert(edit_id, self._base_id, self.branch)
            self._commit_status({edit_id: "reverted"})
        return OpResult(EditInfo.from_stored(dataclasses.replace(edit, status="reverted")), warning)

    def reapply(self, edit_id: int) -> OpResult:
        """Put a reverted edit back; it takes its id-order place in the stack."""
        with self.lock, self.store.file_lock:
            self._sync()
            # Cached deltas were sha256-checked when read; an uncached blob is read (and
            # checked) just below, so the store need not read it a second time.
            self.get(edit_id)  # another visitor's private edit does not exist on this branch
            edit = self.store.plan_reapply(edit_id, self._base_id, check_blob=False)
            self.broken.pop(edit_id, None)
            self.deltas_of(edit)  # raises (naming the edit) before anything changes
            self._commit_status({edit_id: "active"})
        return OpResult(EditInfo.from_stored(dataclasses.replace(edit, status="active")), None)

    def checkout(self, version: int) -> list[int]:
        """Make the active set what it was right after event ``version``; returns active ids.

        Recorded as reverted/reapplied events noted "checkout v<N>": the log stays append-only.
        """
        version = version_number(version)
        with self.lock, self.store.file_lock:
            self._sync()
            changes = self.store.plan_checkout(version, self._base_id)
            if not self.branch.everything:  # on a branch: only this branch's edits change
                mine = {e.id for e in self.history()}
                changes = {i: s for i, s in changes.items() if i in mine}
            for edit_id, status in changes.items():
                if status == "active":
                    self.deltas_of(self.store.get(edit_id))
            if changes:
                self._commit_status(changes, note=f"checkout v{version}")
            return list(self._db_active)

    def _live_requests(self) -> list[EditRequest]:
        """The requests of the edits live on this branch (hparams.keep_prior_edits)."""
        live = set(self._db_active)
        return [r for e in self.history() if e.id in live for r in e.requests]

    # ---- queries ---------------------------------------------------------------------------
    def history(self) -> list[EditInfo]:
        return [EditInfo.from_stored(e) for e in self.store.edits(self._base_id, self.branch)]

    def events(self) -> list[EventInfo]:
        return self.store.events(self._base_id, self.branch)

    def get(self, edit_id: int) -> EditInfo:
        return EditInfo.from_stored(self.store.get(edit_id, self._base_id, self.branch))

    # ---- branches (ftedit/deploy/visitors.py: a visitor's view on a shared deployment) -------------
    def use_branch(self, branch: Branch) -> list[int]:
        """Follow ``branch`` (``Branch.of(visitor)``: the published edits plus the visitor's own;
        ``Branch.PUBLISHED``; ``Branch.ALL``: every edit). Only the deltas that differ between the two
        active sets are applied or removed. Returns the ids now live."""
        with self.lock:
            self.branch = branch
            self._sync()
            return list(self.live.active)

    def publish(self, edit_id: int) -> EditInfo:
        """Make an edit of this branch global (every visitor's stack gains it if active)."""
        from storage.publish import publish

        with self.lock, self.store.file_lock:
            self.get(edit_id)
            publish(self.store, edit_id)
            self._sync()
            return EditInfo.from_stored(self.store.get(edit_id))

    def active_ids(self) -> list[int]:
        with self.lock:
            self._sync()
            return list(self._db_active)

    def report(self, request: EditRequest) -> dict:
        """Greedy completion and target probabilities on the live stack."""
        with self.lock:
            self._sync()
            return rewrite_report(self.model, self.tok, request)

    def generate(
        self, prompt: str, max_new_tokens: int = 20, base: bool = False, chat: bool = False
    ) -> str:
        """Greedy continuation; ``base=True`` answers as the unedited model (restored exactly);
        ``chat=True``: the assistant's answer to ``prompt`` asked in the chat template."""
        from ftedit.core.chat import chat_generate

        fn = chat_generate if chat else complete
        with self.lock:
            self._sync()
            if not base:
                return fn(self.model, self.tok, prompt, max_new_tokens)
            with self.live.temporarily([]):
                return fn(self.model, self.tok, prompt, max_new_tokens)

    def save_model(self, directory: str | Path) -> Path:
        """Write the live (stacked) model as a transformers folder that from_pretrained loads."""
        out = Path(directory)
        with self.lock:
            self._sync()
            self.model.save_pretrained(out)
            self.tok.save_pretrained(out)
        return out

    # ---- verify / files / compare (in their own modules) -----------------------------------
    def verify(self) -> VerifyReport:
        return transfer.verify(self)

    def collect_orphans(self, grace_seconds: float | None = None) -> list[str]:
        """Delete blobs no edit refers to (left by interrupted edits), once older than
        ``grace_seconds`` (default: storage.gc's grace period)."""
        if grace_seconds is None:
            return self.store.collect_orphans()
        return self.store.collect_orphans(grace_seconds)

    def export(self, ids: int | Sequence[int], path: str | Path) -> Path:
        return transfer.export(self, ids, path)

    def import_(self, path: str | Path) -> EditInfo:
        return transfer.import_edit(self, path)

    def diff(self, a: int | str, b: int | str) -> dict:
        return compare.diff(self, a, b)
