"""Facts files: parsing, one bad line refuses the whole file, and `ftedit edit --file`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ftedit.core.factfile import FactFileError, read_facts, table_requests

GOOD = [
    {"prompt": "{} is located in", "subject": "Eiffel Tower", "target_new": "Rome"},
    {
        "prompt": "The capital of {} is",
        "subject": "France",
        "target_new": "Lyon",
        "target_true": "Paris",
    },
]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_and_csv_give_the_same_requests(tmp_path):
    a = read_facts(_jsonl(tmp_path / "f.jsonl", GOOD))
    csv = tmp_path / "f.csv"
    csv.write_text(
        "prompt,subject,target_new,target_true\n"
        "{} is located in,Eiffel Tower,Rome,\n\n"
        "The capital of {} is,France,Lyon,Paris\n"
    )
    assert read_facts(csv) == a
    assert [r.target_true for r in a] == [None, " Paris"] and a[0].target_new == " Rome"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": "no braces", "subject": "x", "target_new": "y"}, "line 2: prompt must"),
        ({"prompt": "{} is", "subject": "x"}, "line 2: target_new is empty"),
        ({"prompt": "{} is", "subject": "x", "target_new": "y", "colour": 1}, "unknown field"),
    ],
)
def test_a_bad_line_is_named(tmp_path, bad, message):
    with pytest.raises(FactFileError, match=message):
        read_facts(_jsonl(tmp_path / "f.jsonl", [GOOD[0], bad]))


def test_bad_files_are_refused_with_a_line_number(tmp_path):
    broken = tmp_path / "f.jsonl"
    broken.write_text(json.dumps(GOOD[0]) + "\n{not json\n")
    with pytest.raises(FactFileError, match="f.jsonl line 2: not JSON"):
        read_facts(broken)
    header = tmp_path / "f.csv"
    header.write_text("prompt,subject\n{} is,x\n")
    with pytest.raises(FactFileError, match="line 1: the header must name"):
        read_facts(header)
    with pytest.raises(FactFileError, match=r"\.jsonl or \.csv"):
        read_facts(tmp_path / "f.txt")
    with pytest.raises(FactFileError, match="holds no facts"):
        read_facts(_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(FactFileError, match="the table line 2"):
        table_requests([GOOD[0], {"prompt": "{} is", "subject": "", "target_new": "y"}])


def _cli(home, *args):
    from ftedit.cli import cli

    return CliRunner().invoke(cli, ["--home", str(home), *args])


@pytest.fixture
def tiny_home(tmp_path):
    """A home, and options that pick a tiny Llama saved to disk and cheap hyperparameters."""
    from tests.tiny import make_llama

    model, tok = make_llama()
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"layers": [0], "num_steps": 2, "lr": 1e-2}))
    return tmp_path / "home", ["--model", str(model_dir), "--hparams", str(hp)]


def test_edit_file_makes_one_edit_per_line_or_one_batch(tmp_path, tiny_home):
    home, opts = tiny_home
    facts = _jsonl(tmp_path / "facts.jsonl", GOOD)
    res = _cli(home, "edit", "--file", str(facts), *opts, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert [e["id"] for e in out["edits"]] == [1, 2]
    assert [len(e["requests"]) for e in out["edits"]] == [1, 1]
    assert all(len(e["neighbours"]) > 0 for e in out["edits"])
    res = _cli(home, "edit", "--file", str(facts), "--batch", *opts)
    assert res.exit_code == 0, res.output
    assert "edit #3" in res.output and "2 facts" in res.output
    log = _cli(home, "log", "--json")
    assert [len(e["requests"]) for e in json.loads(log.output)] == [1, 1, 2]


def test_edit_file_with_a_bad_line_stores_nothing(tmp_path, tiny_home):
    home, opts = tiny_home
    bad = _jsonl(tmp_path / "facts.jsonl", [*GOOD, {"prompt": "{} is", "subject": "x"}])
    for batch in ([], ["--batch"]):
        res = _cli(home, "edit", "--file", str(bad), *batch, *opts)
        assert res.exit_code == 1 and "facts.jsonl line 3: target_new is empty" in res.output
    assert json.loads(_cli(home, "log", "--json").output) == []
    res = _cli(home, "edit", "--file", str(bad), "--prompt", "{} is", *opts)
    assert res.exit_code == 2 and "--file" in res.output
