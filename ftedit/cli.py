"""`ftedit` console script (also `python -m ftedit`).

Commands that only read or re-label the store (log, events, show, revert, reapply, checkout,
export of one edit, gc) never import torch or load a model: the next process that opens the
model replays the store. Commands that need weights load the model lazily.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import click

from ftedit.errors import FteditError

MODEL_HELP = "model: the built-in default, a local folder, a .gguf file or a Hugging Face id"
DTYPES = ("float32", "bfloat16", "float16")


class _Group(click.Group):
    """Turns domain errors into one clean line (no traceback) and exit code 1. An OSError that
    escapes (a path that cannot be created or written) is said in one line too."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FteditError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None


class _Id(click.ParamType):
    """An edit id: ASCII digits, 1 .. 2**63 - 1 (``int`` would take '٣' as 3 and 2**64)."""

    name = "ID"

    def convert(self, value, param, ctx):
        from ftedit.parse import InputError, edit_id

        try:
            return edit_id(value)
        except InputError as e:
            self.fail(str(e), param, ctx)


class _Text(click.ParamType):
    """Text that must be valid UTF-8 (non-UTF-8 argv bytes arrive as surrogate escapes)."""

    name = "TEXT"

    def convert(self, value, param, ctx):
        from ftedit.parse import InputError, text

        try:
            return text(value, f"--{param.name.replace('_', '-')}" if param else "the text")
        except InputError as e:
            self.fail(str(e), param, ctx)


ID, TEXT = _Id(), _Text()


def _opening(home: str | None, what):
    """Run ``what`` (opening the store, and the model with it), turning what goes wrong while
    opening into a StoreError that says what to fix: a malformed FTEDIT_DATABASE_URL, a missing
    driver, a file that is not a database, an unknown blob protocol, a home that cannot be made."""
    from ftedit.errors import StoreError

    try:
        return what()
    except FteditError:
        raise
    except OSError as e:
        where = e.filename or home or "the store folder"
        raise StoreError(
            f"cannot use {where}: {e.strerror or e}; give --home (or FTEDIT_HOME) a folder "
            "you can write"
        ) from None
    except ImportError as e:  # a database driver that is not installed
        raise StoreError(
            f"the database driver {e.name or ''} is not installed: install it, or fix "
            "FTEDIT_DATABASE_URL"
        ) from None
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        module = type(e).__module__
        if module.startswith("sqlalchemy"):
            raise StoreError(
                f"cannot open the database: {why}. FTEDIT_DATABASE_URL must be a database URL "
                "like sqlite:////path/ftedit.db or postgresql://user@host/name, naming a "
                "database (not another kind of file)"
            ) from None
        if isinstance(e, ValueError) and "protocol" in why.lower():
            raise StoreError(
                f"FTEDIT_BLOB_URL: {why}; use a folder or an fsspec URL such as s3://bucket/x"
            ) from None
        raise


class _Ctx:
    def __init__(self, home: str | None, model: str | None, dtype: str | None):
        self.home, self.model, self.dtype = home, model, dtype
        self._ws = self._store = None

    def store(self):
        if self._store is None:
            from ftedit.paths import store_location
            from storage.store import Store

            self._store = _opening(self.home, lambda: Store(*store_location(self.home)))
        return self._store

    def log_json(self) -> str:
        """`log --json`: the stdlib-sqlite fast path when it applies (no SQLAlchemy import)."""
        import sqlite3

        from ftedit import paths
        from storage import fastlog

        try:
            fast = fastlog.log_json(paths.database_url(self.home))
        except sqlite3.Error:
            fast = None  # let the store open it and say what is wrong
        return fast if fast is not None else self.store().log_json()

    def workspace(self, model: str | None = None, dtype: str | None = None):
        if self._ws is None:
            from ftedit.versioning.workspace import Workspace

            # The store first: a bad URL, driver or home is said before a model loads, and an
            # ImportError from the model's own loading is not mistaken for a database driver's.
            self.store()
            self._ws = Workspace(model or self.model, self.home, dtype=dtype or self.dtype)
            if self._ws.dtype_notice:
                click.echo(f"warning: {self._ws.dtype_notice}", err=True)
        return self._ws


pass_ctx = click.make_pass_decorator(_Ctx)
DTYPE_HELP = "weights dtype (default float32); edits are kept per dtype"


def _dtype_option(f):
    """``--dtype`` given after a command that loads the model (the group's
    ``ftedit --dtype X CMD`` works too)."""

    @functools.wraps(f)
    def run(*args, dtype=None, **kwargs):
        if dtype is not None:
            click.get_current_context().find_object(_Ctx).dtype = dtype
        return f(*args, **kwargs)

    return click.option("--dtype", type=click.Choice(DTYPES), default=None, help=DTYPE_HELP)(run)


def _json(obj) -> None:
    click.echo(json.dumps(_standard(obj), sort_keys=True, default=str, allow_nan=False))


def _standard(obj):
    """Standard JSON has no Infinity/NaN (a row stored before hparams were checked for them
    may hold one): those become the strings "inf" / "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(v) for v in obj]
    return obj


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="FTEDIT_HOME",
    help="store folder (default: $FTEDIT_HOME or the user data dir)",
)
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option(
    "--dtype", type=click.Choice(DTYPES), default=None, envvar="FTEDIT_DTYPE", help=DTYPE_HELP
)
@click.pass_context
def cli(ctx: click.Context, home: str | None, model: str | None, dtype: str | None) -> None:
    """Edit facts in a language model (ROME's FT / FT-L), keeping every edit reversible."""
    ctx.obj = _Ctx(home, model, dtype)


# ---- editing ---------------------------------------------------------------------------------
def _hparams(ws, preset: str | None, hparams_file: str | None):
    from ftedit.core.hparams import FTHyperParams, load_preset

    if preset and hparams_file:
        raise click.UsageError("give --preset or --hparams, not both")
    if hparams_file:
        return FTHyperParams.from_json(hparams_file)
    return load_preset(preset) if preset else ws.default_hparams()


def _fmt(report: dict) -> str:
    p_true = report.get("p_target_true")
    true = f"  P(target_true)={p_true:.4f}" if p_true is not None else ""
    return f"{report['completion']!r}  P(target_new)={report['p_target_new']:.4f}{true}"


@cli.command()
@click.option("--prompt", type=TEXT, help="prompt with one {} for the subject")
@click.option("--subject", type=TEXT, help="the subject, e.g. 'Eiffel Tower'")
@click.option("--target", type=TEXT, help="the new answer, e.g. 'Rome'")
@click.option("--target-true", default=None, type=TEXT, help="the current answer, e.g. 'Paris'")
@click.option("--preset", default=None, help="hyperparameter preset name (ftedit/core/presets)")
@click.option(
    "--hparams", "hparams_file", type=click.Path(dir_okay=False), help="hyperparameters JSON file"
)
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help=DTYPE_HELP)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object as the last line")
@click.option(
    "--file",
    "facts",
    type=click.Path(exists=True, dir_okay=False),
    help="many facts: a .jsonl or .csv with prompt, subject, target_new, target_true per line",
)
@click.option("--batch", is_flag=True, help="with --file: one edit holding every fact")
@click.option(
    "--neighbours",
    default=None,
    help="subjects to check for side effects, e.g. 'Louvre: Paris, Big Ben' "
    "(default: the 10 most similar subjects of the keep pool)",
)
@pass_ctx
def edit(
    c: _Ctx,
    prompt,
    subject,
    target,
    target_true,
    preset,
    hparams_file,
    model,
    dtype,
    as_json,
    facts,
    batch,
    neighbours,
) -> None:
    """Rewrite one fact (or every fact of --file), store the edit, show before and after."""
    from ftedit.cli_facts import edit_file, neighbour_lines
    from ftedit.core.requests import EditRequest

    if facts and (prompt or subject or target or target_true):
        raise click.UsageError("give --file or --prompt/--subject/--target, not both")
    if not facts and not (prompt and subject and target):
        raise click.UsageError("give --prompt, --subject and --target (or --file FACTS.jsonl)")
    if batch and not facts:
        raise click.UsageError("--batch goes with --file")
    if facts:
        ws = c.workspace(model, dtype)
        edit_file(ws, facts, batch, _hparams(ws, preset, hparams_file), as_json, neighbours)
        return
    request = EditRequest(prompt, subject, target, target_true)
    if preset and hparams_file:
        raise click.UsageError("give --preset or --hparams, not both")
    # A bad hparams file is refused before the model loads; lengths before any scoring.
    hp = _hparams(None, preset, hparams_file) if preset or hparams_file else None
    ws = c.workspace(model, dtype)
    info = ws.edit([request], hp or _hparams(ws, None, None), neighbours=neighbours)
    before, after = info.metrics["before"][0], info.metrics["after"][0]
    if as_json:
        _json(
            {
                "id": info.id,
                "request": request.to_dict(),
                "before": before,
                "after": after,
                "steps": info.steps,
                "seconds": info.seconds,
                "neighbours": info.metrics.get("neighbours", []),
            }
        )
        return
    click.echo(f"edit #{info.id}: {request.text!r} -> {request.target_new!r}")
    click.echo(f"  before: {_fmt(before)}")
    click.echo(f"  after:  {_fmt(after)}")
    click.echo(f"  {info.steps} steps, {info.seconds:.2f} s")
    click.echo("\n".join(neighbour_lines(info.metrics.get("neighbours", []))))


@cli.command()
@click.argument("prompt", type=TEXT)
@click.option("--base", is_flag=True, help="answer as the unedited base model")
@click.option("--max-new-tokens", default=20, show_default=True, type=click.IntRange(1, 2048))
@click.option("--chat", is_flag=True, help="ask PROMPT as a question in the chat template")
@_dtype_option
@pass_ctx
def generate(c: _Ctx, prompt: str, base: bool, max_new_tokens: int, chat: bool) -> None:
    """Greedy continuation of PROMPT with the current stack of edits (or the base); with
    --chat, the assistant's answer to PROMPT asked as a question."""
    from ftedit.core.requests import check_prompt_length

    if not prompt.strip():
        raise click.BadParameter("the prompt is empty: give text to complete", param_hint="PROMPT")
    ws = c.workspace()
    check_prompt_length(ws.tok, prompt)  # the same token limit as an edit's prompt
    text = ws.generate(prompt, max_new_tokens, base=base, chat=chat)
    if ws.broken and not base:  # a damaged blob: the stack served lacks those edits
        for i, why in sorted(ws.broken.items()):
            click.echo(f"warning: edit #{i} is damaged and NOT applied: {why}")
    click.echo(text if chat else prompt + text)


# ---- history (store only: no model load) ---------------------------------------------------------
@cli.command("log")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print a JSON array: id, status, created_at, requests, method, origin, "
    "steps, seconds, tensor_names, blob_sha256, base_model",
)
@pass_ctx
def log_(c: _Ctx, as_json: bool) -> None:
    """List every edit, oldest first (`show ID` gives one edit in full)."""
    if as_json:
        sys.stdout.write(c.log_json() + "\n")  # megabytes: skip click.echo's per-call work
        return
    from ftedit.versioning.records import EditInfo  # lenient: old rows always list

    edits = [EditInfo.from_stored(e) for e in c.store().edits()]
    if not edits:
        click.echo("no edits yet: `ftedit edit --help` shows how to make one")
    for e in edits:
        r = e.request
        more = f" (+{len(e.requests) - 1} more)" if len(e.requests) > 1 else ""
        click.echo(
            f"#{e.id:<5} {e.status:<8} {e.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{r.text!r} -> {r.target_new!r}{more}"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of events")
@pass_ctx
def events(c: _Ctx, as_json: bool) -> None:
    """The append-only event log; each event id is a version for `checkout` and `diff`."""
    evs = c.store().events()
    if as_json:
        _json([e.to_dict() for e in evs])
        return
    for e in evs:
        note = f"  ({e.note})" if e.note else ""
        click.echo(f"v{e.id:<5} {e.created_at:%Y-%m-%d %H:%M:%S}  {e.kind:<9} #{e.edit_id}{note}")


@cli.command()
@click.argument("edit_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="print the edit as JSON")
@pass_ctx
def show(c: _Ctx, edit_id: int, as_json: bool) -> None:
    """Details of one edit."""
    from ftedit.versioning.records import EditInfo  # lenient: old rows always show

    e = EditInfo.from_stored(c.store().get(edit_id))
    if as_json:
        _json(e.to_dict())
        return
    when = f"{e.created_at:%Y-%m-%d %H:%M:%S}"
    click.echo(f"edit #{e.id} ({e.status}, {e.origin}, {e.method}) {when}")
    for r in e.requests:
        click.echo(f"  request: {r.text!r} -> {r.target_new!r} (was {r.target_true!r})")
    pairs = zip(e.metrics.get("before", []), e.metrics.get("after", []), strict=False)
    for k, (b, a) in enumerate(pairs):
        click.echo(f"  [{k}] before: {_fmt(b)}\n      after:  {_fmt(a)}")
    from ftedit.cli_facts import neighbour_lines  # no torch: show stays a store-only command

    for line in neighbour_lines(e.metrics.get("neighbours", [])):
        click.echo(line)
    click.echo(f"  tensors: {', '.join(e.tensor_names)}")
    click.echo(f"  {e.steps} steps, {e.seconds:.2f} s; blob {e.blob_sha256}")
    click.echo(f"  hparams: {json.dumps(e.hparams_dict(), sort_keys=True)}")


@cli.command()
@click.argument("edit_id", type=ID)
@pass_ctx
def revert(c: _Ctx, edit_id: int) -> None:
    """Undo an edit exactly (it stays in the history and can be reapplied)."""
    res = c.store().revert(edit_id)
    click.echo(f"reverted edit #{edit_id}")
    if res.warning:
        click.echo(f"warning: {res.warning}", err=True)


@cli.command()
@click.argument("edit_id", type=ID)
@pass_ctx
def reapply(c: _Ctx, edit_id: int) -> None:
    """Put a reverted edit back on the stack."""
    c.store().reapply(edit_id)
    click.echo(f"reapplied edit #{edit_id}")


@cli.command()
@click.argument("version")
@pass_ctx
def checkout(c: _Ctx, version: str) -> None:
    """Make the active edits what they were right after event VERSION (e.g. 12 or v12)."""
    from ftedit.parse import version as version_number

    try:
        v = version_number(version)
    except FteditError as e:
        raise click.BadParameter(str(e), param_hint="VERSION") from None
    active = c.store().checkout(v)
    click.echo(f"checked out v{v}; active edits: {', '.join(f'#{i}' for i in active) or 'none'}")


# ---- comparing, files, integrity -----------------------------------------------------------
@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@_dtype_option
@pass_ctx
def diff(c: _Ctx, a: str, b: str, as_json: bool) -> None:
    """Compare two edits (like 3 5) or two versions (like v4 v9)."""
    from ftedit.parse import InputError, ref

    try:
        a, b = ref(a), ref(b)
    except InputError as e:
        raise click.BadParameter(str(e)) from None
    d = c.workspace().diff(a, b)
    if as_json:
        _json(d)
        return
    click.echo(f"a = {d['a']['kind']} {d['a']['ref']}, b = {d['b']['kind']} {d['b']['ref']}")
    click.echo(
        f"shared tensors: {len(d['shared_tensors'])}, only a: {len(d['only_a'])}, "
        f"only b: {len(d['only_b'])}; cosine {d['cosine']:.4f}"
    )
    n = d["norm"]
    click.echo(f"norms: a {n['a']:.4g}, b {n['b']:.4g}, a-b {n['a_minus_b']:.4g}")
    for side in ("a", "b"):
        layers = ", ".join(f"{k}: {v:.3g}" for k, v in d["layer_norms"][side].items())
        click.echo(f"layer norms {side}: {layers}")
    for row in d["behaviour"]:
        click.echo(
            f"#{row['edit']} {row['prompt']!r}: P(new) {row['a']['p_target_new']:.4f} -> "
            f"{row['b']['p_target_new']:.4f}"
        )


@cli.command()
@click.argument("edit_ids", type=ID, nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write")
@_dtype_option
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@pass_ctx
def export(c: _Ctx, edit_ids: tuple[int, ...], out: str, force: bool) -> None:
    """Write edits as a safetensors file (one edit: its stored file, byte for byte)."""
    from ftedit.versioning.transfer import check_out_path, write_export

    check_out_path(Path(out), force)  # before reading anything or loading a model
    try:
        if len(edit_ids) == 1:
            store = c.store()
            e = store.get(edit_ids[0])
            write_export(Path(out), store.blobs.get(e.blob_sha256, what=f"edit #{e.id}"))
        else:
            c.workspace().export(list(edit_ids), out)
    except OSError as e:
        raise click.ClickException(
            f"cannot write {out}: {e.strerror or e}; give --out a path in a folder you can write"
        ) from None
    click.echo(f"wrote {out}")


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@_dtype_option
@click.option(
    "--allow-any-tensor",
    is_flag=True,
    help="accept tensors outside the file's recorded hparams (layers, rewrite_module_tmp)",
)
@click.option(
    "--again", is_flag=True, help="import a file that is already an edit here (stacks it twice)"
)
@pass_ctx
def import_(c: _Ctx, path: str, allow_any_tensor: bool, again: bool) -> None:
    """Add an edit file made for this base model (validated before anything changes)."""
    from ftedit.versioning.transfer import import_edit

    info = import_edit(c.workspace(), path, allow_any_tensor=allow_any_tensor, again=again)
    click.echo(f"imported {path} as edit #{info.id}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print {ok, problems, orphans, ...}")
@_dtype_option
@pass_ctx
def verify(c: _Ctx, as_json: bool) -> None:
    """Check the database (SQLite quick_check), blobs, the log, and that the live weights
    equal a replay; exit 1 if not ok."""
    damage = c.store().integrity_problems()
    if damage:  # before loading a model: every later step reads this database
        from ftedit.versioning.records import VerifyReport

        if as_json:
            _json(VerifyReport(problems=damage).to_dict())
        else:
            for p in damage:
                click.echo(f"problem: {p}")
            click.echo("NOT ok: the database is damaged; `ftedit recover` rebuilds it from blobs")
        click.get_current_context().exit(1)
    report = c.workspace().verify()
    if as_json:
        _json(report.to_dict())
    else:
        for p in report.problems:
            click.echo(f"problem: {p}")
        for o in report.orphans:
            click.echo(f"orphan blob (collect with `ftedit gc`): {o}")
        click.echo(
            f"{'ok' if report.ok else 'NOT ok'}: {report.checked_edits} edits, "
            f"{report.checked_tensors} tensors checked"
        )
    if not report.ok:
        click.get_current_context().exit(1)


@cli.command("save-model")
@click.argument("directory", type=click.Path(file_okay=False))
@_dtype_option
@pass_ctx
def save_model(c: _Ctx, directory: str) -> None:
    """Write the current stacked model as a transformers folder (from_pretrained loads it)."""
    try:  # before the model loads: a folder that cannot be made is said at once
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(
            f"cannot create folder {directory}: {e.strerror}", param_hint="DIRECTORY"
        ) from None
    click.echo(f"saved to {c.workspace().save_model(directory)}")


@cli.command()
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="minutes: only collect orphans older than this (an edit in progress in another "
    "process or replica has written its blob but not yet its row)",
)
@pass_ctx
def gc(c: _Ctx, grace: float) -> None:
    """Delete orphan blobs (left by edits interrupted before their commit).

    On a blob root shared with other stores (homes or replicas), a blob counts as an orphan
    only if no registered store's database refers to it; gc refuses if one cannot be read."""
    from storage.gc import collect

    gone, young = collect(c.store(), grace * 60)
    kept = f"; kept {young} younger than {grace:g} min (--grace 0 collects them)" if young else ""
    click.echo(f"removed {len(gone)} orphan blob(s){kept}")


@cli.command()
@click.option(
    "--log",
    "log_db",
    type=click.Path(exists=True, dir_okay=False),
    help="an older copy of the database whose event log gives ids and statuses",
)
@click.option("--force", is_flag=True, help="rebuild even a database that reads fine")
@pass_ctx
def recover(c: _Ctx, log_db: str | None, force: bool) -> None:
    """Rebuild a lost or damaged SQLite database from the blob root.

    The damaged file is renamed aside, never deleted. Statuses come from the damaged file's
    event log if it still reads, or --log; otherwise every edit comes back reverted."""
    from ftedit.paths import store_location
    from storage.recover import recover as rebuild

    where = store_location(c.home)
    r = rebuild(where.home, log_db, force, where.database_url, where.blob_url)
    for path in r.moved_to:
        click.echo(f"kept the old file as {path}")
    for line in r.skipped:
        click.echo(f"skipped: {line}")
    click.echo(f"recovered {len(r.recovered)} edit(s) from the blob root")
    if r.log_source:
        click.echo(f"ids, order and statuses from the event log of {r.log_source}")
    if r.reverted_unknown:
        ids = ", ".join(f"#{i}" for i in r.reverted_unknown)
        click.echo(
            f"no event log knew edit(s) {ids}: they came back REVERTED (ordered by when "
            "their blobs were written); `ftedit reapply ID` brings back the ones that were live"
        )


def main() -> None:
    cli(prog_name="ftedit")
