"""Storage layer: migrations, engine, blob store, edit file format (golden bytes), event log."""

from __future__ import annotations

import hashlib
import json
from datetime import timezone

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from safetensors import safe_open
from sqlalchemy import inspect, text

from ftedit.errors import EditNotFoundError, ImportRefusedError, IntegrityError, StoreError
from ftedit.paths import store_location
from storage import editfile
from storage.blobs import LocalBlobStore
from storage.db import HEAD, MIGRATIONS, make_engine, open_engine
from storage.models import Base
from storage.store import Store
from tests.storekit import REQUESTS, add_row

# Every test here runs on SQLite and on PostgreSQL (tests/conftest.py: database_url).
pytestmark = pytest.mark.usefixtures("database_url")


def test_blank_database_upgrades_and_matches_models(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) >= {"base_models", "edits", "events"}
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_head_constant_is_alembic_head():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD


def test_sqlite_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_blob_store_put_get_dedupe_delete(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    sha = blobs.put(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert blobs.path(sha) == tmp_path / "blobs" / sha[:2] / f"{sha}.safetensors"
    assert blobs.put(b"hello") == sha and blobs.list() == [sha]
    assert blobs.get(sha) == b"hello" and blobs.exists(sha)
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))
    blobs.delete(sha)
    assert not blobs.exists(sha) and blobs.list() == []
    with pytest.raises(IntegrityError, match="missing"):
        blobs.get(sha, what="edit #7")


def test_blob_store_detects_a_flipped_byte(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    sha = blobs.put(b"some bytes")
    p = blobs.path(sha)
    p.write_bytes(b"some bytez")
    with pytest.raises(IntegrityError, match=r"edit #3: .*corrupt"):
        blobs.get(sha, what="edit #3")


GOLDEN_META = editfile.edit_metadata(
    base={
        "name": "golden",
        "source": "test",
        "revision": None,
        "file_sha256": "ab" * 32,
        "dtype": "float32",
    },
    base_tensors={"model.layers.0.mlp.down_proj.weight": "cd" * 32},
    requests=[
        {
            "prompt": "{} is located in",
            "subject": "Eiffel Tower",
            "target_new": " Rome",
            "target_true": " Paris",
        }
    ],
    hparams={"layers": [0], "lr": 0.0005, "norm_constraint": 0.0005, "num_steps": 25},
)
GOLDEN_TENSORS = {
    "model.layers.0.mlp.down_proj.weight": torch.arange(6.0).reshape(2, 3) / 8,
    "model.layers.0.mlp.down_proj.bias": torch.tensor([-1.0, 0.5]),
}
# Changing this number changes the on-disk format: bump FORMAT_VERSION and keep old readers.
GOLDEN_SHA256 = "89831f8b566f6c70916b11c41db34b194edb630e9ec6936abac2479497bdffe7"


def test_golden_bytes_pin_the_edit_file_format():
    data = editfile.encode(GOLDEN_TENSORS, GOLDEN_META)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    # Same input, reordered: same bytes (no timestamps, sorted keys).
    again = editfile.encode(
        dict(reversed(GOLDEN_TENSORS.items())), dict(reversed(GOLDEN_META.items()))
    )
    assert again == data


def test_edit_file_is_plain_safetensors(tmp_path):
    p = tmp_path / "e.safetensors"
    p.write_bytes(editfile.encode(GOLDEN_TENSORS, GOLDEN_META))
    with safe_open(str(p), framework="pt") as f:
        assert f.metadata() == GOLDEN_META
        for name, t in GOLDEN_TENSORS.items():
            got = f.get_tensor(name)
            assert got.dtype == torch.float32 and torch.equal(got, t)
    meta = editfile.parse_metadata(GOLDEN_META)
    assert meta["base_tensors"] == {"model.layers.0.mlp.down_proj.weight": "cd" * 32}
    assert "created" not in json.dumps(GOLDEN_META)


def test_parse_metadata_refuses_foreign_files():
    with pytest.raises(ImportRefusedError, match="not an ftedit edit file"):
        editfile.parse_metadata({"format": "pt"})
    with pytest.raises(ImportRefusedError, match="version 9"):
        editfile.parse_metadata({**GOLDEN_META, "format_version": "9"})
    with pytest.raises(ImportRefusedError, match="not a safetensors file"):
        editfile.decode(b"\x01")


def _store_with_edits(n: int) -> tuple[Store, int]:
    store = Store(*store_location())
    base = store.base_id(
        {"name": "b", "source": "s", "revision": None, "file_sha256": "0", "dtype": "float32"}
    )
    for i in range(n):
        sha = store.blobs.put(f"blob {i}".encode())
        add_row(store, base, REQUESTS[i % 4], sha, f"t{i % 2}", losses=[1.0], steps=1, seconds=0.1)
    return store, base


def test_revert_warning_names_imported_edits_as_imported_not_trained():
    store, base = _store_with_edits(2)  # #1 on t0, #2 on t1
    sha = store.blobs.put(b"imported blob")
    add_row(store, base, REQUESTS[0], sha, "t0", origin="imported")
    warning = store.revert(1).warning
    assert "imported edit #3 was applied after it to the same tensors" in warning
    assert "trained on top" not in warning


def test_event_log_is_append_only_and_versions_replay():
    store, base = _store_with_edits(3)  # events v1..v3: created #1..#3
    res = store.revert(1)
    assert "#3 was trained on top of it" in res.warning and "not 'never made'" in res.warning
    assert store.revert(2).warning is None  # #2 touches t1, later #3 touches t0
    with pytest.raises(StoreError, match="already reverted"):
        store.revert(2)
    assert store.active_ids(base) == [3]
    assert store.checkout(2) == [1, 2]  # right after v2: #1 and #2 made, #3 not yet
    kinds = [(e.edit_id, e.kind, e.note) for e in store.events()]
    assert kinds[:5] == [
        (1, "created", None),
        (2, "created", None),
        (3, "created", None),
        (1, "reverted", None),
        (2, "reverted", None),
    ]
    assert sorted(kinds[5:]) == [
        (1, "reapplied", "checkout v2"),
        (2, "reapplied", "checkout v2"),
        (3, "reverted", "checkout v2"),
    ]
    assert store.state_at(4)[1] == {1: "reverted", 2: "active", 3: "active"}
    assert store.status_problems() == []
    assert all(e.created_at.tzinfo == timezone.utc for e in store.events())
    with pytest.raises(StoreError, match="no version v99"):
        store.checkout(99)
    with pytest.raises(EditNotFoundError, match="no edit #42"):
        store.get(42)


def test_orphans_are_listed_and_collected():
    store, _ = _store_with_edits(1)
    orphan = store.blobs.put(b"never committed")
    (store.blobs.root / "ab").mkdir(exist_ok=True)
    (store.blobs.root / "ab" / ".tmp-x.safetensors").write_bytes(b"half")
    assert orphan in store.orphans() and len(store.orphans()) == 2
    assert store.collect_orphans() == []  # too young: an edit may be about to commit them
    assert len(store.collect_orphans(grace_seconds=0)) == 2
    assert store.orphans() == [] and len(store.blobs.list()) == 1


def test_reapply_refuses_a_corrupt_blob():
    store, _ = _store_with_edits(2)
    store.revert(1)
    store.blobs.path(store.get(1).blob_sha256).write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="edit #1"):
        store.reapply(1)
    assert store.get(1).status == "reverted"
