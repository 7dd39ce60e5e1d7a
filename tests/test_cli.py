"""The `ftedit` CLI through click's CliRunner, on a tiny model saved to a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ftedit.cli import cli
from ftedit.paths import store_location
from tests.storekit import assert_same, params
from tests.tiny import make_llama

ROOT = Path(__file__).resolve().parents[1]
EDIT = [
    "edit",
    "--prompt",
    "{} is located in",
    "--subject",
    "Eiffel Tower",
    "--target",
    "Rome",
    "--target-true",
    "Paris",
]
REPORT_KEYS = {"completion", "p_target_new", "p_target_true"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    model, tok = make_llama()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    hp = {
        "layers": [0],
        "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
        "num_steps": 2,
        "lr": 0.01,
        "norm_constraint": None,
    }
    (out / "hp.json").write_text(json.dumps(hp))
    return out


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_edits(tiny_dir):
    m = ["--model", str(tiny_dir)]
    first = last_json(run(*m, *EDIT, "--hparams", str(tiny_dir / "hp.json"), "--json"))
    second = last_json(
        run(
            *m,
            "edit",
            "--prompt",
            "{} speaks",
            "--subject",
            "Danielle Darrieux",
            "--target",
            "English",
            "--hparams",
            str(tiny_dir / "hp.json"),
            "--json",
        )
    )
    return m, first, second


@pytest.mark.parametrize("command", [None, *sorted(cli.commands)])
def test_every_command_has_help(command):
    result = run(*([command] if command else []), "--help")
    assert "Usage:" in result.output and "--help" in result.output


def test_edit_json_is_one_object_on_the_last_line(two_edits):
    _, first, second = two_edits
    assert set(first) == {"id", "request", "before", "after", "steps", "seconds", "neighbours"}
    assert first["neighbours"] and {"prompt", "before", "after", "changed"} <= set(
        first["neighbours"][0]
    )
    assert (first["id"], second["id"]) == (1, 2)
    assert first["request"] == {
        "prompt": "{} is located in",
        "subject": "Eiffel Tower",
        "target_new": " Rome",
        "target_true": " Paris",
    }
    assert set(first["before"]) == set(first["after"]) == REPORT_KEYS
    assert first["after"]["p_target_new"] > first["before"]["p_target_new"]
    assert second["after"]["p_target_true"] is None and first["steps"] == 2


def test_edit_human_output(tiny_dir):
    out = run("--model", str(tiny_dir), *EDIT, "--hparams", str(tiny_dir / "hp.json")).stdout
    assert "edit #1" in out and "before:" in out and "after:" in out and "P(target_new)=" in out


def test_log_show_events_json(two_edits):
    log = json.loads(run("log", "--json").stdout)
    assert [e["id"] for e in log] == [1, 2] and all(e["status"] == "active" for e in log)
    assert log[0]["requests"][0]["subject"] == "Eiffel Tower"
    shown = json.loads(run("show", "1", "--json").stdout)
    assert shown["id"] == 1 and set(shown["metrics"]) == {"before", "after", "neighbours"}
    assert shown["tensor_names"] == ["model.layers.0.mlp.down_proj.weight"]
    events = json.loads(run("events", "--json").stdout)
    assert [(e["id"], e["kind"], e["edit_id"]) for e in events] == [
        (1, "created", 1),
        (2, "created", 2),
    ]
    assert "#1" in run("log").stdout and "Eiffel Tower" in run("show", "1").stdout
    assert "neighbours: kept " in run("show", "1").stdout  # the side-effect table is shown


def test_revert_warns_reapply_checkout(two_edits):
    res = run("revert", "1")
    assert "reverted edit #1" in res.stdout
    assert "#2 was trained on top of it" in res.stderr
    assert json.loads(run("show", "1", "--json").stdout)["status"] == "reverted"
    assert "reapplied edit #1" in run("reapply", "1").stdout
    assert "active edits: #1" in run("checkout", "v1").stdout
    notes = [e["note"] for e in json.loads(run("events", "--json").stdout)]
    assert notes[-1] == "checkout v1"
    m = two_edits[0]
    assert json.loads(run(*m, "verify", "--json").stdout)["ok"] is True


def test_domain_errors_are_one_line_without_traceback(two_edits):
    res = run("show", "99", ok=False)
    assert res.exit_code == 1 and "Error: no edit #99" in res.output
    assert "Traceback" not in res.output
    res = run("revert", "1")
    res = run("revert", "1", ok=False)
    assert "already reverted" in res.output
    assert run("checkout", "vx", ok=False).exit_code == 2


def test_verify_json_fails_with_exit_1_on_a_corrupt_blob(two_edits, ftedit_home):
    m = two_edits[0]
    rep = json.loads(run(*m, "verify", "--json").stdout)
    assert rep["ok"] is True and rep["problems"] == [] and rep["checked_edits"] == 2
    sha = two_edits[1]["id"] and json.loads(run("show", "2", "--json").stdout)["blob_sha256"]
    blob = ftedit_home / "blobs" / sha[:2] / f"{sha}.safetensors"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    res = run(*m, "verify", "--json", ok=False)
    rep = last_json(res)
    assert res.exit_code == 1 and rep["ok"] is False
    assert any("edit #2" in p for p in rep["problems"])


def test_export_import_diff_gc_generate_save(two_edits, tmp_path, tiny_dir):
    m = two_edits[0]
    out = tmp_path / "e1.safetensors"
    assert "wrote" in run("export", "1", "--out", str(out)).stdout
    assert "as edit #3" in run(*m, "import", str(out), "--again").stdout
    assert json.loads(run("show", "3", "--json").stdout)["origin"] == "imported"
    run(*m, "export", "1", "2", "--out", str(tmp_path / "both.safetensors"))
    d = json.loads(run(*m, "diff", "1", "2", "--json").stdout)
    assert d["shared_tensors"] == ["model.layers.0.mlp.down_proj.weight"]
    assert {"behaviour", "cosine", "layer_norms", "tensor_norms", "norm"} <= set(d)
    assert "cosine" in run(*m, "diff", "v1", "v3").stdout
    assert "removed 0" in run("gc").stdout
    prompt = "the Eiffel Tower is located in"
    assert run(*m, "generate", prompt, "--max-new-tokens", "3").stdout.startswith(prompt)
    run(*m, "generate", prompt, "--base")
    saved = tmp_path / "saved"
    run(*m, "save-model", str(saved))
    from transformers import AutoModelForCausalLM

    from ftedit.versioning.workspace import Workspace

    replay = Workspace(str(tiny_dir))  # the same folder, replaying the same home
    assert_same(params(AutoModelForCausalLM.from_pretrained(saved)), params(replay))


def test_log_json_does_not_import_torch(two_edits, ftedit_home):
    code = (
        "import sys; from ftedit.cli import cli\n"
        "try: cli(['log', '--json'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"FTEDIT_HOME": str(ftedit_home), "PATH": ""},
    ).stdout
    assert out.strip().splitlines()[-1] == "False"
    assert len(json.loads(out.strip().splitlines()[0])) == 2


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "ftedit", "--help"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Usage: ftedit" in out or "Usage: python -m ftedit" in out


@pytest.mark.real_model
def test_default_model_edit_persists_verifies_and_reverts_exactly():
    torch.manual_seed(0)
    prompt = "The Eiffel Tower is located in the city of"
    base_answer = run("generate", prompt, "--max-new-tokens", "4").stdout
    res = run(*EDIT, "--preset", "smollm2-ft-l", "--json")  # no --model: the embedded default
    obj = last_json(res)
    assert obj["id"] == 1 and set(obj["after"]) == REPORT_KEYS
    assert obj["after"]["p_target_new"] > obj["before"]["p_target_new"]
    rep = json.loads(run("verify", "--json").stdout)
    assert rep["ok"] is True and rep["checked_edits"] == 1
    assert run("generate", prompt, "--max-new-tokens", "4", "--base").stdout == base_answer
    assert "reverted edit #1" in run("revert", "1").stdout
    assert run("generate", prompt, "--max-new-tokens", "4").stdout == base_answer
    assert json.loads(run("verify", "--json").stdout)["ok"] is True


def test_log_json_fast_path_matches_the_store_byte_for_byte(two_edits, ftedit_home):
    from storage import fastlog
    from storage.db import HEAD
    from storage.store import Store

    assert fastlog.SCHEMA == HEAD  # a new migration must update the fast query too
    store = Store(*store_location(ftedit_home))
    store.revert(1)
    url = f"sqlite:///{ftedit_home / 'ftedit.db'}"
    fast = fastlog.log_json(url)
    assert fast is not None and fast == store.log_json()
    assert run("log", "--json").stdout == fast + "\n"
    assert fastlog.log_json("postgresql://x/y") is None  # other backends: the Store path
    assert fastlog.log_json(f"sqlite:///{ftedit_home / 'missing.db'}") is None
