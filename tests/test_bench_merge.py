"""bench/merge_results.py: joined reports say what one run over the joined records would say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftedit.core import evaluate as ev
from tests.benchkit import load_bench

merge_results = load_bench("merge_results")


def _rows(lo: int, n: int, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        v = ((lo + i) * 7 + seed) % 11 / 10
        out.append(
            {
                "case_id": lo + i,
                "efficacy": float(v > 0.3),
                "paraphrase": v,
                "neighborhood": 1 - v,
                "efficacy_magnitude": v - 0.5,
                "paraphrase_magnitude": v / 2,
                "neighborhood_magnitude": -v / 3,
                "gen_entropy": 5 + v,
                "seconds": 1 + v,
            }
        )
    return out


def _report(folder: Path, lo: int, n: int, methods: dict[str, dict | None]) -> Path:
    rows = {m: _rows(lo, n, seed) for seed, m in enumerate(methods)}
    folder.mkdir()
    (folder / "results.json").write_text(
        json.dumps(
            {
                "title": f"CounterFact test, records {lo}-{lo + n - 1}, tiny, one edit at a time",
                "dataset": "counterfact",
                "split": "test",
                "records": n,
                "gen_prompts": 1,
                "gen_tokens": 40,
                "gen_records": 20,
                "hparams": methods,
                "summaries": {m: ev.summarize(r) for m, r in rows.items()},
                "rows": rows,
            }
        )
    )
    return folder


def test_consecutive_ranges_summarise_as_one_run(tmp_path):
    hp = {"lr": 1e-3}
    a = _report(tmp_path / "a", 250, 100, {"unedited": None, "default": hp})
    noted = {**hp, "note": "reworded since"}  # a note is not a hyperparameter
    b = _report(tmp_path / "b", 350, 50, {"unedited": None, "default": noted, "extra": hp})
    out = tmp_path / "out"
    merge_results.main([str(a), str(b), "--out", str(out)])
    got = json.loads((out / "results.json").read_text())
    assert got["records"] == 150
    assert got["title"].startswith("CounterFact test, records 250-399,")
    assert list(got["summaries"]) == ["unedited", "default"]  # "extra" lacks records 250-349
    for m, seed in (("unedited", 0), ("default", 1)):
        whole = _rows(250, 100, seed) + _rows(350, 50, seed)
        assert got["summaries"][m] == ev.summarize(whole)
        assert [r["case_id"] for r in got["rows"][m]] == list(range(250, 400))
    assert (out / "results.md").read_text().count("| 150 |") == 2
    assert (out / "results.png").stat().st_size > 0


def test_same_records_join_their_methods(tmp_path):
    a = _report(tmp_path / "a", 0, 20, {"unedited": None})
    b = _report(tmp_path / "b", 0, 20, {"default": {"lr": 1e-3}, "fast": {"lr": 2e-3}})
    merged = merge_results.merge([json.loads((d / "results.json").read_text()) for d in (a, b)])
    assert list(merged["summaries"]) == ["unedited", "default", "fast"]
    assert merged["records"] == 20
    assert merged["hparams"]["fast"] == {"lr": 2e-3}


@pytest.mark.parametrize(
    "second, message",
    [
        ((360, 10, {"m": None}), "not consecutive"),
        ((260, 10, {"m": {"lr": 1.0}}), "other hyperparameters"),
        ((250, 10, {"m": None}), "in two reports"),
        ((260, 10, {"other": None}), "no method is in every record range"),
    ],
)
def test_bad_inputs_are_refused_and_write_nothing(tmp_path, second, message):
    a = _report(tmp_path / "a", 250, 10, {"m": None})
    b = _report(tmp_path / "b", *second)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        merge_results.main([str(a), str(b), "--out", str(out)])
    assert not out.exists()


def test_a_report_without_a_record_range_is_refused(tmp_path):
    a = _report(tmp_path / "a", 250, 10, {"m": None})
    b = tmp_path / "b"
    b.mkdir()
    (b / "results.json").write_text(
        json.dumps({**json.loads((a / "results.json").read_text()), "title": "x"})
    )
    with pytest.raises(SystemExit, match="no 'records A-B' in the title"):
        merge_results.main([str(a), str(b), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
