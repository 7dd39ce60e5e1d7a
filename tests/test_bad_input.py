"""Issue 16's bad inputs: each is one clear line (no traceback) and changes nothing.

One home with two edits (tiny model) serves every case; each case compares the store (log,
events, blob files) before and after, and the last test checks that `verify` still passes.
The CLI cases run through CliRunner; the app cases call ui/handlers.py directly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path

import gradio as gr
import pytest
from click.testing import CliRunner

from ftedit.cli import cli
from tests.tiny import make_llama

HP = {
    "layers": [0],
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "num_steps": 2,
    "lr": 0.01,
    "norm_constraint": None,
}
BIG = str(2**63)
EDIT = ["edit", "--prompt", "{} is located in", "--subject", "Eiffel Tower"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model folder, a home holding edits #1 and #2, and an export of #1."""
    root = tmp_path_factory.mktemp("bad-input")
    model, tok = make_llama()
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "hp.json").write_text(json.dumps(HP))
    w = {"root": root, "home": root / "home", "m": ["--model", str(root / "tiny")]}
    for subject, target in (("Eiffel Tower", "Rome"), ("Danielle Darrieux", "English")):
        args = ["edit", "--prompt", "{} is in", "--subject", subject, "--target", target]
        invoke(w, *w["m"], *args, "--hparams", str(root / "hp.json"), ok=True)
    invoke(w, "export", "1", "--out", str(root / "e1.safetensors"), ok=True)
    (root / "text.txt").write_text("not a database\n" * 10)
    return w


def invoke(w, *args, env=None, ok=False):
    env = {"FTEDIT_HOME": str(w["home"]), **(env or {})}
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def state(w):
    """Rows, events and blob files of the home (read with the stdlib: cheap, independent)."""
    con = sqlite3.connect(f"file:{w['home'] / 'ftedit.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, status, blob_sha256 FROM edits ORDER BY id").fetchall()
        events = con.execute("SELECT id, kind, edit_id FROM events ORDER BY id").fetchall()
    finally:
        con.close()
    blobs = sorted(p.name for p in (w["home"] / "blobs").rglob("*") if p.is_file())
    assert rows and events and blobs  # the home the cases run against: two edits
    return rows, events, blobs


def assert_one_line_error(result, match: str):
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    message = result.output[result.output.index("Error") :]
    assert match.lower() in " ".join(message.split()).lower(), result.output


# ---- edit files to import ----------------------------------------------------------------
def _parts(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), bytearray(data[8 + n :])


def _join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + bytes(body)


def tampered(w, how: str) -> Path:
    header, body = _parts((w["root"] / "e1.safetensors").read_bytes())
    meta = header["__metadata__"]
    name = next(k for k in header if k != "__metadata__")
    if how in ("base_tensors", "hparams"):
        meta[how] = "[]" if how == "base_tensors" else "null"
    elif how == "long_target":
        reqs = json.loads(meta["requests"])
        reqs[0]["target_new"] = "Rome " * 2000
        meta["requests"] = json.dumps(reqs)
    elif how == "huge_delta":
        a = header[name]["data_offsets"][0]
        body[a : a + 4] = struct.pack("<f", 1e30)
    elif how == "declares_terabytes":
        header[name]["shape"], header[name]["data_offsets"] = [2**40], [0, 2**42]
    elif how == "norm_weight":
        n = 32  # hidden size of the tiny model
        bt = json.loads(meta["base_tensors"])
        header = {"model.norm.weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
        from ftedit.core.models import tensor_sha256
        from ftedit.versioning.workspace import Workspace

        ws = Workspace(str(w["root"] / "tiny"), w["home"])
        bt = {"model.norm.weight": tensor_sha256(ws.live.params["model.norm.weight"].detach())}
        meta["base_tensors"] = json.dumps(bt)
        header["__metadata__"], body = meta, body[: 4 * n]
    out = w["root"] / f"{how}.safetensors"
    out.write_bytes(_join(header, body))
    return out


def hparams_file(w, text: str | bytes) -> str:
    p = w["root"] / "bad-hp.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def fake_gguf(w) -> str:
    p = w["root"] / "fake.gguf"
    p.write_bytes(b"this is not gguf at all")
    return str(p)


# id, arguments (a function of the world), environment, the fix the message must name
CLI_CASES = [
    ("revert-2^63", lambda w: ["revert", BIG], {}, "between 1 and"),
    ("show-2^64", lambda w: ["show", str(2**64)], {}, "between 1 and"),
    ("reapply-1e30", lambda w: ["reapply", str(10**30)], {}, "between 1 and"),
    ("revert-arabic-3", lambda w: ["revert", "٣"], {}, "ASCII digits"),
    ("show-superscript", lambda w: ["show", "²"], {}, "ASCII digits"),
    ("checkout-superscript", lambda w: ["checkout", "v²"], {}, "ASCII digits"),
    ("checkout-arabic-3", lambda w: ["checkout", "v٣"], {}, "ASCII digits"),
    ("checkout-2^63", lambda w: ["checkout", "v" + BIG], {}, "between 1 and"),
    ("diff-2^63", lambda w: [*w["m"], "diff", "1", BIG], {}, "between 1 and"),
    ("diff-superscript", lambda w: [*w["m"], "diff", "v²", "v1"], {}, "ASCII digits"),
    ("export-2^63", lambda w: ["export", BIG, "--out", w["root"] / "x.st"], {}, "between 1 and"),
    (
        "target-not-utf8",
        lambda w: [*w["m"], *EDIT, "--target", "Rome\udcff"],
        {},
        "--target is not valid UTF-8",
    ),
    *[
        (
            f"hparams-{name}",
            lambda w, text=text: [
                *w["m"],
                *EDIT,
                "--target",
                "Rome",
                "--hparams",
                hparams_file(w, text),
            ],
            {},
            fix,
        )
        for name, text, fix in [
            ("null", "null", "must hold a JSON object"),
            ("binary", b"\xf4\x80\x00\xff\xfe", "not UTF-8"),
            ("layers-abc", '{"layers": "abc"}', "layers must be a list of whole numbers"),
            ("steps-2.5", '{"num_steps": 2.5}', "num_steps must be a whole number"),
            ("seed-abc", '{"seed": "abc"}', "seed must be a whole number"),
            ("lr-fast", '{"lr": "fast"}', 'lr must be a number, got "fast"'),
            ("string-fast", '"fast"', 'must hold a JSON object like {"lr": 0.001}, got str "fast"'),
            ("lr-infinity", '{"lr": Infinity}', "lr must be a finite number"),
            ("lr-nan", '{"lr": NaN}', "lr must be > 0, got nan"),
        ]
    ],
    ("generate-empty", lambda w: [*w["m"], "generate", ""], {}, "prompt is empty"),
    ("generate-long", lambda w: [*w["m"], "generate", "x " * 300], {}, "the limit is 128"),
    ("import-dev-zero", lambda w: [*w["m"], "import", "/dev/zero"], {}, "not a safetensors file"),
    *[
        (f"import-{how}", lambda w, how=how: [*w["m"], "import", tampered(w, how)], {}, fix)
        for how, fix in [
            ("base_tensors", "'base_tensors' must be an object"),
            ("hparams", "'hparams' must be an object"),
            ("long_target", "the limit is 128"),
            ("huge_delta", "moves a weight by 1e+30"),
            ("declares_terabytes", "edit files for this model are at most"),
            ("norm_weight", "pass --allow-any-tensor"),
        ]
    ],
    (
        "import-over-deployment-limit",
        lambda w: [*w["m"], "import", w["root"] / "e1.safetensors"],
        {"FTEDIT_MAX_PROMPT_TOKENS": "2"},
        "(FTEDIT_MAX_PROMPT_TOKENS)",
    ),
    (
        "import-twice",
        lambda w: [*w["m"], "import", w["root"] / "e1.safetensors"],
        {},
        "already edit #1 (active)",
    ),
    (
        "export-overwrite",
        lambda w: ["export", "1", "--out", w["root"] / "e1.safetensors"],
        {},
        "exists: pass --force",
    ),
    ("export-uncreatable", lambda w: ["export", "1", "--out", "/proc/nope/x.st"], {}, "cannot"),
    (
        "save-model-uncreatable",
        lambda w: [*w["m"], "save-model", w["root"] / "text.txt" / "m"],
        {},
        "cannot create folder",
    ),
    ("home-uncreatable", lambda w: ["--home", w["root"] / "text.txt" / "h", "log"], {}, "--home"),
    ("db-url-malformed", lambda w: ["log"], {"FTEDIT_DATABASE_URL": "nonsense"}, "DATABASE_URL"),
    ("db-driver-missing", lambda w: ["log"], {"FTEDIT_DATABASE_URL": "mysql://u@h/x"}, "driver"),
    (
        "db-not-a-database",
        lambda w: ["log"],
        {"FTEDIT_DATABASE_URL": "sqlite:///{text}"},
        "is damaged (file is not a database)",
    ),
    ("blob-protocol", lambda w: ["log"], {"FTEDIT_BLOB_URL": "nope://x"}, "FTEDIT_BLOB_URL"),
    (
        "gguf-not-gguf",
        lambda w: ["--model", fake_gguf(w), "generate", "hi"],
        {"FTEDIT_CACHE": "{cache}"},
        "not GGUF",
    ),
]


@pytest.mark.parametrize(
    "args, env, fix", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input_is_one_line_and_changes_nothing(world, monkeypatch, args, env, fix):
    cache = world["root"] / "cache"
    env = {k: v.format(text=world["root"] / "text.txt", cache=cache) for k, v in env.items()}
    before = state(world)
    result = invoke(world, *args(world), env=env)
    assert_one_line_error(result, fix)
    assert state(world) == before
    assert not list(cache.glob("*.lock"))  # a refused .gguf leaves no lock file in the cache


def test_edit_length_is_checked_before_the_before_report(world, monkeypatch):
    import ftedit.versioning.workspace

    def scored(*a, **k):
        raise AssertionError("scored a request before checking its length")

    monkeypatch.setattr(ftedit.versioning.workspace, "rewrite_report", scored)
    before = state(world)
    result = invoke(world, *world["m"], *EDIT, "--target", "Rome " * 2000)
    assert_one_line_error(result, "the limit is 128")
    assert state(world) == before


# ---- the app's handlers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(world):
    from ftedit.versioning.workspace import Workspace
    from ui import handlers, state

    state.set_workspace(Workspace(str(world["root"] / "tiny"), world["home"]))
    yield handlers
    state.set_workspace(None)


BAD_NUMBERS = ["abc", "inf", "nan", 1e300, float("inf"), float("nan"), [1, 2], "٣", "²", 2**70]
ARGS = ["{} is located in", "Eiffel Tower", "Rome", None, "auto"]
APP_CASES = [
    *[(f"{fn}-{v!r}", fn, (v,), {}) for fn in ("revert", "reapply", "export") for v in BAD_NUMBERS],
    *[(f"revert-{v!r}", "revert", (v,), {}) for v in (2**63, BIG, "", "#٣")],
    *[(f"checkout-{v!r}", "checkout", (v,), {}) for v in ("v²", "v٣", "v" + BIG, 2**63)],
    *[(f"compare-{v!r}", "compare", (v, "1"), {}) for v in ("v²", BIG, "٣", [1])],
    *[(f"generate-n-{v!r}", "generate", ("the Eiffel Tower", v), {}) for v in BAD_NUMBERS],
    ("generate-long", "generate", ("x " * 300, 5), {}),
    *[
        (f"edit-{field}-{v!r}", "run_edit", ARGS, {field: v})
        for field in ("lr", "num_steps", "norm_constraint", "layers")
        for v in BAD_NUMBERS
        if not (field == "layers" and v == [1, 2])  # a list of layers is a good value there
    ],
    ("edit-long-target", "run_edit", ["{} is in", "Eiffel Tower", "Rome " * 2000], {}),
]


@pytest.mark.parametrize(
    "fn, args, kwargs", [c[1:] for c in APP_CASES], ids=[c[0] for c in APP_CASES]
)
def test_app_bad_input_is_a_gr_error_and_changes_nothing(world, app, fn, args, kwargs):
    before = state(world)
    with pytest.raises(gr.Error) as err:
        getattr(app, fn)(*args, **kwargs)
    message = str(err.value).strip()
    assert message and "\n" not in message and "Traceback" not in message
    assert state(world) == before


def test_app_import_refuses_tampered_files(world, app):
    before = state(world)
    for how in ("huge_delta", "norm_weight", "long_target"):
        with pytest.raises(gr.Error, match="nothing was changed"):
            app.import_file(str(tampered(world, how)))
    assert state(world) == before


def test_verify_passes_after_every_refused_case(world):
    """After all the cases above: the live weights still equal a replay of the store."""
    result = invoke(world, *world["m"], "verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["checked_edits"] == 2 and not report["orphans"]


def test_show_json_is_standard_json_for_rows_stored_before_the_checks(tmp_path):
    """A box of Infinity used to be accepted (and trains fine); such a row still loads, and
    `show --json` prints standard JSON for it."""
    from ftedit.core.hparams import FTHyperParams
    from ftedit.core.requests import EditRequest
    from ftedit.versioning.workspace import Workspace

    model, tok = make_llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    ws = Workspace(str(tmp_path / "m"), tmp_path / "h")
    hp = FTHyperParams(num_steps=1, lr=0.01, norm_constraint=float("inf"))
    ws.edit(EditRequest("{} is in", "Eiffel Tower", "Rome"), hp)
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "show", "1", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert shown["hparams"]["norm_constraint"] == "inf"


def test_import_flags_exports_mode_and_damaged_blob(world, app, tmp_path):
    """--allow-any-tensor and --again let the refused files in; exports follow the umask; a
    damaged blob is named by generate and verify (this test changes the home: it runs last)."""
    m = world["m"]
    norm = tampered(world, "norm_weight")
    assert "as edit #3" in invoke(world, *m, "import", norm, "--allow-any-tensor", ok=True).stdout
    e1 = world["root"] / "e1.safetensors"
    assert "as edit #4" in invoke(world, *m, "import", e1, "--again", ok=True).stdout
    with pytest.warns(UserWarning, match="already edit #1"):  # the app imports, and warns
        assert "edit #5" in app.import_file(str(e1))[0]
    old = os.umask(0o027)
    try:
        out = tmp_path / "e2.safetensors"
        invoke(world, "export", "2", "--out", out, ok=True)
        assert out.stat().st_mode & 0o777 == 0o640
        invoke(world, "export", "2", "--out", out, "--force", ok=True)  # overwrites when told
    finally:
        os.umask(old)
    con = sqlite3.connect(f"file:{world['home'] / 'ftedit.db'}?mode=ro", uri=True)
    try:  # an active edit's blob (the root also holds the store's marker under stores/)
        (sha,) = con.execute(
            "SELECT blob_sha256 FROM edits WHERE status = 'active' LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    blob = next((world["home"] / "blobs").rglob(f"{sha}*"))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    res = invoke(world, *m, "generate", "the Eiffel Tower is in", "--max-new-tokens", "2")
    assert res.exit_code == 0 and "is damaged and NOT applied" in res.stdout
    assert invoke(world, *m, "verify").exit_code == 1
