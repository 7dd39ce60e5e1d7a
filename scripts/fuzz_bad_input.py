"""Throw a few hundred random bad inputs at the CLI and the app's handlers; print the counts.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/fuzz_bad_input.py [--n 300] [--seed 0]

Shapes come from issue 16's list (tests/test_bad_input.py pins each one): ids and versions
past 2**63 or in non-ASCII digits, hparams files of the wrong type or non-finite numbers, random
bytes and tampered edit files to import, paths that cannot be created, bad store URLs, and web
number fields given strings, inf/nan, 1e300, lists or ''. Every case runs on a tiny model in a
home that already holds two edits; the store (rows, events, blob files) is compared before and
after each case. Outcomes:

    clear      a one-line error (ClickException / usage error, or gr.Error) and no state change
    accepted   it ran (for inputs that are merely odd, e.g. unicode prompts to generate)
    traceback  any other exception escaped (a crash)
    changed    the store differs afterwards although the input was refused or is bad
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import struct
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr
import torch
from click.testing import CliRunner

from ftedit.cli import cli

HUGE = [2**63, 2**63 + 1, 2**64, 10**30, -(2**63) - 1, -1, 0]
UNICODE_DIGITS = ["²", "٣", "३", "৪", "①", "𝟓", "Ⅻ", "߃", "໒"]
NUMBERS = ["abc", "", " ", "1.5", "1e300", "inf", "-inf", "nan", "NaN", "Infinity", "0x10", "1_0"]
JUNK_JSON = [
    "null",
    '"fast"',
    "[]",
    "[1, 2]",
    "3",
    "true",
    '{"layers": "abc"}',
    '{"num_steps": 2.5}',
    '{"seed": "abc"}',
    '{"lr": "fast"}',
    '{"lr": Infinity}',
    '{"lr": NaN}',
    '{"lr": -Infinity}',
    '{"lr": 1e400}',
    '{"layers": [0.5]}',
    '{"layers": [[0]]}',
    '{"layers": {"a": 1}}',
    '{"batch_size": true}',
    '{"norm_constraint": "x"}',
    '{"weight_decay": "0"}',
    '{"early_stop_loss": null}',
    '{"objective": 3}',
    '{"rewrite_module_tmp": 5}',
    '{"kl_factor": NaN}',
    '{"layers": [99999999999999999999999]}',
    '{"num_steps": 1e300}',
]
EDIT = ["edit", "--prompt", "{} is located in", "--subject", "Eiffel Tower"]


def rand_text(rng: random.Random, n: int | None = None) -> str:
    n = rng.randint(0, 12) if n is None else n
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x600, 0x6FF), (0x4E00, 0x4E80), (0x1F600, 0x1F64F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def bad_id(rng: random.Random) -> str:
    return str(rng.choice([rng.choice(HUGE), rng.choice(NUMBERS), rng.choice(UNICODE_DIGITS)]))


def bad_version(rng: random.Random) -> str:
    pick = rng.randrange(4)
    if pick == 0:
        return "v" + rng.choice(UNICODE_DIGITS)
    if pick == 1:
        return rng.choice(["", "v"]) + str(rng.choice(HUGE[:5]))
    if pick == 2:
        return rng.choice(UNICODE_DIGITS) + rng.choice(["", "1"])
    return "v" + rand_text(rng, 3)


# ---- the world: a tiny model and a home with two edits -------------------------------------
def make_world(root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.tiny import make_llama

    model_dir = root / "tiny"
    model, tok = make_llama()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    hp = {"layers": [0], "num_steps": 2, "lr": 0.01, "norm_constraint": None}
    (root / "hp.json").write_text(json.dumps(hp))
    home = root / "home"
    os.environ["FTEDIT_HOME"] = str(home)
    os.environ["FTEDIT_CACHE"] = str(root / "cache")  # fake .gguf files must not touch the real one
    m = ["--model", str(model_dir)]
    for subject, target in (("Eiffel Tower", "Rome"), ("Danielle Darrieux", "English")):
        r = CliRunner().invoke(
            cli,
            [*m, "edit", "--prompt", "{} is in", "--subject", subject, "--target", target]
            + ["--hparams", str(root / "hp.json")],
        )
        assert r.exit_code == 0, r.output
    good = root / "good.safetensors"
    r = CliRunner().invoke(cli, ["export", "1", "--out", str(good)])
    assert r.exit_code == 0, r.output
    return {"root": root, "home": home, "m": m, "good": good.read_bytes(), "hp": hp}


def snapshot(home: Path):
    """Rows, events and blob files of the store (read with the stdlib: cheap and independent)."""
    db = home / "ftedit.db"
    rows = ()
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = (
                con.execute("select id, status, blob_sha256 from edits order by id").fetchall(),
                con.execute("select id, kind, edit_id from events order by id").fetchall(),
            )
        finally:
            con.close()
    blobs = sorted(str(p.relative_to(home)) for p in (home / "blobs").rglob("*") if p.is_file())
    return rows, blobs


# ---- edit files to import ------------------------------------------------------------------
def tampered(good: bytes, rng: random.Random) -> bytes:
    """The good export with its metadata or a tensor changed in one of the issue's ways."""
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    meta = header["__metadata__"]
    body = bytearray(good[8 + n :])
    pick = rng.randrange(8)
    if pick == 0:
        meta["base_tensors"] = rng.choice(["[]", "null", '"x"', "3", "{}"])
    elif pick == 1:
        meta["hparams"] = rng.choice(["null", "[]", '"fast"', '{"lr": "fast"}', '{"lr": 1e999}'])
    elif pick == 2:
        reqs = json.loads(meta["requests"])
        reqs[0]["target_new"] = "Rome " * rng.choice([200, 2000])
        meta["requests"] = json.dumps(reqs)
    elif pick == 3:
        meta["requests"] = rng.choice(["null", "{}", '[{"prompt": 3}]', "[[]]", '"x"'])
    elif pick == 4:  # a huge but finite delta
        name = next(k for k in header if k != "__metadata__")
        a, _ = header[name]["data_offsets"]
        body[a : a + 4] = struct.pack("<f", rng.choice([1e30, 3e38, -1e20, 1e6]))
    elif pick == 5:  # declare a tensor far larger than the file
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2**40, 2**10]
        header[name]["data_offsets"] = [0, 2**52]
    elif pick == 6:  # a tensor FT never edits
        header.pop("__metadata__")
        return _rename_tensor(good, header, meta, "model.norm.weight", body)
    else:
        meta = {k: v for k, v in meta.items() if rng.random() < 0.7}
    head = json.dumps({**header, "__metadata__": meta}).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + bytes(body)


def _rename_tensor(good, header, meta, new_name, body) -> bytes:
    name = next(iter(header))
    shape = header[name]["shape"]
    # model.norm.weight has shape [hidden]: keep the first `hidden` floats
    hidden = shape[0]
    header = {new_name: {"dtype": "F32", "shape": [hidden], "data_offsets": [0, 4 * hidden]}}
    bt = json.loads(meta["base_tensors"])
    meta = {**meta, "base_tensors": json.dumps({new_name: next(iter(bt.values()))})}
    head = json.dumps({**header, "__metadata__": meta}).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + bytes(body[: 4 * hidden])


def random_file(rng: random.Random, world: dict) -> bytes:
    pick = rng.randrange(4)
    if pick == 0:
        return rng.randbytes(rng.randint(0, 4000))
    if pick == 1:  # a header length far past the end, then junk
        return struct.pack("<Q", rng.choice([2**40, 2**63, 2**64 - 1, 10**12])) + rng.randbytes(64)
    if pick == 2:
        return struct.pack("<Q", 2) + b"{}" + rng.randbytes(rng.randint(0, 50))
    return tampered(world["good"], rng)


# ---- cases ---------------------------------------------------------------------------------
def cli_case(rng: random.Random, world: dict, tmp: Path):
    """(label, args, env, odd): odd=True for inputs that may legitimately run."""
    m, hp = world["m"], world["root"] / "hp.json"
    kind = rng.randrange(12)
    if kind == 0:
        cmd = rng.choice(["revert", "show", "reapply"])
        return cmd, [cmd, bad_id(rng)], {}, False
    if kind == 1:
        return "checkout", ["checkout", bad_version(rng)], {}, False
    if kind == 2:
        a = rng.choice([bad_id(rng), bad_version(rng)])
        return "diff", [*m, "diff", a, rng.choice(["1", "v1", a])], {}, False
    if kind == 3:
        f = tmp / "hp.json"
        f.write_bytes(rng.choice(JUNK_JSON).encode() if rng.random() < 0.8 else rng.randbytes(40))
        return "edit --hparams", [*m, *EDIT, "--target", "Rome", "--hparams", str(f)], {}, False
    if kind == 4:
        target = rng.choice(
            ["", " ", "\udcff\udcfe", "Rome\udc80", "Rome " * rng.choice([200, 3000])]
        )
        return "edit --target", [*m, *EDIT, "--target", target, "--hparams", str(hp)], {}, False
    if kind == 5:
        prompt = rng.choice(["", "   ", "x " * 3000, rand_text(rng), "\udcff"])
        odd = 0 < len(prompt.strip()) < 100 and "\udcff" not in prompt
        return "generate", [*m, "generate", prompt], {}, odd
    if kind == 6:
        f = tmp / "edit.safetensors"
        f.write_bytes(random_file(rng, world))
        return "import", [*m, "import", str(f)], {}, False
    if kind == 7:
        where = rng.choice(["/proc/nope/x.safetensors", str(world["good_file"]) + "/x", "/"])
        return "export --out", ["export", "1", "--out", where], {}, False
    if kind == 8:
        where = rng.choice(["/proc/nope/model", str(world["good_file"]) + "/m"])
        return "save-model", [*m, "save-model", where], {}, False
    if kind == 9:
        home = rng.choice(["/proc/nope", str(world["good_file"]) + "/h", "/dev/null"])
        return "--home", ["--home", home, "log"], {}, False
    if kind == 10:
        url = rng.choice(
            [
                "nonsense",
                "sqlite//x",
                "postgresql://",
                "mysql://u@localhost/x",
                "oracle://x",
                "sqlite:///" + str(world["good_file"]),
                "sqlite:////proc/nope/x.db",
                "://",
            ]
        )
        if rng.random() < 0.3:
            return (
                "blob url",
                ["log"],
                {"FTEDIT_BLOB_URL": rng.choice(["foo://x", "unknownproto://bucket"])},
                False,
            )
        return "database url", ["log"], {"FTEDIT_DATABASE_URL": url}, False
    g = tmp / "fake.gguf"
    g.write_bytes(rng.randbytes(rng.randint(0, 200)))
    return "gguf", ["--model", str(g), "generate", "hi"], {}, False


def handler_case(rng: random.Random, world: dict, tmp: Path):
    from ui import fields, handlers

    def value():
        return rng.choice(
            [
                *NUMBERS,
                *UNICODE_DIGITS,
                float("inf"),
                float("nan"),
                1e300,
                -1e300,
                [1, 2],
                [],
                {"a": 1},
                2**63,
                2**70,
                -(2**63) - 5,
                None,
                "v" + rng.choice(UNICODE_DIGITS),
            ]
        )

    kind = rng.randrange(8)
    if kind == 0:
        fn = rng.choice(["revert", "reapply", "details", "export"])
        return f"app {fn}", lambda: getattr(handlers, fn)(value()), False
    if kind == 1:
        return (
            "app checkout",
            lambda: handlers.checkout(rng.choice([value(), bad_version(rng)])),
            False,
        )
    if kind == 2:
        return "app compare", lambda: handlers.compare(value(), rng.choice(["1", value()])), False
    if kind == 3:
        prompt = rng.choice(["", "x " * 3000, rand_text(rng), None])
        odd = prompt is not None and 0 < len(prompt.strip()) < 100
        n = rng.choice([value(), 5]) if odd else value()
        return "app generate", lambda: handlers.generate(prompt, n), odd and n == 5
    if kind in (4, 5):
        field = rng.choice(["layers", "lr", "num_steps", "norm_constraint"])
        # blank ('' / None) means "keep the preset's value", so only values that are bad
        bad = rng.choice(["abc", "inf", "nan", "0x10", "1e300", *UNICODE_DIGITS])
        kw = {field: rng.choice([bad, float("inf"), float("nan"), 1e300, [1, 2], {"a": 1}, 2**70])}
        args = ["{} is located in", "Eiffel Tower", "Rome", None, fields.AUTO]
        return f"app edit {field}", lambda: handlers.run_edit(*args, **kw), False
    if kind == 6:
        args = [rng.choice(["", "{} is in", "no braces", "{} {}"]), rand_text(rng), rand_text(rng)]
        if args[0] == "{} is in" and args[1].strip() and args[2].strip():
            args[2] = "x " * 400  # too long
        return "app edit text", lambda: handlers.run_edit(*args), False
    f = tmp / "upload.safetensors"
    f.write_bytes(random_file(rng, world))
    return "app import", lambda: handlers.import_file(str(f)), False


def run(n: int, seed: int) -> Counter:
    rng = random.Random(seed)
    counts: Counter = Counter()
    crashes: Counter = Counter()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        world = make_world(root)
        world["good_file"] = root / "good.safetensors"
        world["good_file"].write_bytes(world["good"])
        from ftedit.versioning.workspace import Workspace
        from ui import state

        tmp = root / "cases"
        tmp.mkdir()
        for i in range(n):
            before = snapshot(world["home"])
            if i % 2 == 0:
                label, args, env, odd = cli_case(rng, world, tmp)
                r = CliRunner().invoke(cli, args, env=env)
                out = r.output
                if r.exit_code == 0:
                    outcome = "accepted"
                elif isinstance(r.exception, SystemExit) and "Traceback" not in out:
                    outcome = "clear"
                else:
                    outcome = "traceback"
                    why = "".join(traceback.format_exception_only(r.exception)).strip()
            else:
                if state._workspace is None:
                    state.set_workspace(Workspace(str(root / "tiny"), world["home"]))
                label, call, odd = handler_case(rng, world, tmp)
                try:
                    call()
                    outcome = "accepted"
                except gr.Error:
                    outcome = "clear"
                except Exception as e:  # noqa: BLE001 - the point is to count these
                    outcome = "traceback"
                    why = f"{type(e).__name__}: {str(e)[:100]}"
            changed = snapshot(world["home"]) != before
            counts["cases"] += 1
            counts[outcome] += 1
            if outcome == "accepted" and not odd:
                counts["bad input accepted"] += 1
                crashes[f"{label}: accepted"] += 1
            if changed:
                counts["state changes"] += 1
                crashes[f"{label}: changed state"] += 1
            if outcome == "traceback":
                crashes[f"{label}: {why.splitlines()[-1][:110]}"] += 1
    for k, v in crashes.most_common():
        print(f"  {v:4d}  {k}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    counts = run(a.n, a.seed)
    keys = ["cases", "clear", "accepted", "bad input accepted", "traceback", "state changes"]
    print("  ".join(f"{k}: {counts[k]}" for k in keys))


if __name__ == "__main__":
    main()
