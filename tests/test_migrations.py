"""Old stores keep working: a POPULATED database at migration 0001 (rows written before
branches existed, with hyperparameters today's code renamed, dropped or validates differently)
is upgraded to head and its edits are listed and shown."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from ftedit.cli import cli
from storage.db import HEAD, MIGRATIONS, current_revision
from storage.store import Store

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
REQUEST = {"prompt": "{} plays", "subject": "Ada", "target_new": " chess", "target_true": " go"}
OLD_HPARAMS = [
    # An unknown (renamed) hyperparameter and missing ones (objective, kl_factor, ...).
    {"layers": [0], "lr": 5e-4, "num_steps": 10, "clamp_norm_factor": 0.75},
    # A value today's validation refuses (an objective that no longer exists).
    {"layers": [1], "lr": 1e-3, "num_steps": 5, "objective": "whole_sentence"},
]


def _database_at_0001(home) -> str:
    url = f"sqlite:///{home / 'ftedit.db'}"
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO base_models (id, name, source, revision, file_sha256, dtype, "
                "created_at) VALUES (1, 'old-model', 'hf', NULL, 'ab', 'float32', :t)"
            ),
            {"t": WHEN},
        )
        for i, hp in enumerate(OLD_HPARAMS, start=1):
            conn.execute(
                text(
                    "INSERT INTO edits (id, base_model_id, requests, hparams, method, objective, "
                    "origin, metrics, losses, steps, seconds, blob_sha256, tensor_names, status, "
                    "created_at) VALUES (:id, 1, :req, :hp, 'FT-L', 'prompt_last', 'trained', "
                    "'{}', '[1.0]', 3, 0.5, :sha, '[\"w\"]', 'active', :t)"
                ),
                {
                    "id": i,
                    "req": json.dumps([REQUEST]),
                    "hp": json.dumps(hp),
                    "sha": f"{i:064x}",
                    "t": WHEN,
                },
            )
            conn.execute(
                text(
                    "INSERT INTO events (edit_id, kind, created_at, note) "
                    "VALUES (:id, 'created', :t, NULL)"
                ),
                {"id": i, "t": WHEN},
            )
    assert current_revision(engine) == "0001"
    engine.dispose()
    return url


def test_populated_0001_database_upgrades_and_lists_its_edits(ftedit_home):
    url = _database_at_0001(ftedit_home)
    store = Store(ftedit_home, url)  # opening migrates to head
    assert current_revision(store.engine) == HEAD
    assert [(e.id, e.owner, e.status) for e in store.edits()] == [
        (1, None, "active"),
        (2, None, "active"),
    ]  # 0002's owner column: NULL, i.e. published
    store.engine.dispose()

    runner = CliRunner()
    log = runner.invoke(cli, ["--home", str(ftedit_home), "log"])
    assert log.exit_code == 0, log.output
    assert "#1" in log.output and "#2" in log.output and "' chess'" in log.output

    shown = runner.invoke(cli, ["--home", str(ftedit_home), "show", "1", "--json"])
    assert shown.exit_code == 0, shown.output
    hp = json.loads(shown.output)["hparams"]
    assert hp["clamp_norm_factor"] == 0.75  # unknown: kept and shown
    assert hp["num_steps"] == 10 and hp["objective"] == "prompt_last"  # missing: defaulted

    shown = runner.invoke(cli, ["--home", str(ftedit_home), "show", "2"])
    assert shown.exit_code == 0, shown.output
    assert '"objective": "whole_sentence"' in shown.output  # shown as stored, not refused
