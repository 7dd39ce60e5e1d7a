"""`ftedit` console script (also `python -m ftedit`).

Commands that only read or re-label the store (log, events, show, revert, reapply, checkout,
export of one edit, gc) never import torch or load a model: the next process that opens the
model replays the store. Commands that need weights load the model lazily.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ftedit.errors import FteditError

MODEL_HELP = "model: the built-in default, a local folder, a .gguf file or a Hugging Face id"
DTYPES = ("float32", "bfloat16", "float16")


class _Group(click.Group):
    """Turns domain errors into one clean line (no traceback) and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FteditError as e:
            raise click.ClickException(str(e)) from None


class _Ctx:
    def __init__(self, home: str | None, model: str | None, dtype: str | None):
        self.home, self.model, self.dtype = home, model, dtype
        self._ws = self._store = None

    def store(self):
        if self._store is None:
            from storage.store import Store

            self._store = Store(self.home)
        return self._store

    def log_json(self) -> str:
        """`log --json`: the stdlib-sqlite fast path when it applies (no SQLAlchemy import)."""
        from ftedit import paths
        from storage import fastlog

        fast = fastlog.log_json(paths.database_url(self.home))
        return fast if fast is not None else self.store().log_json()

    def workspace(self, model: str | None = None, dtype: str | None = None):
        if self._ws is None:
            from ftedit.workspace import Workspace

            self._ws = Workspace(model or self.model, self.home, dtype=dtype or self.dtype)
        return self._ws


pass_ctx = click.make_pass_decorator(_Ctx)


def _json(obj) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="FTEDIT_HOME",
    help="store folder (default: $FTEDIT_HOME or the user data dir)",
)
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="weights dtype")
@click.pass_context
def cli(ctx: click.Context, home: str | None, model: str | None, dtype: str | None) -> None:
    """Edit facts in a language model (ROME's FT / FT-L), keeping every edit reversible."""
    ctx.obj = _Ctx(home, model, dtype)


# ---- editing ---------------------------------------------------------------------------------
def _hparams(ws, preset: str | None, hparams_file: str | None):
    from ftedit.hparams import FTHyperParams, load_preset

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
@click.option("--prompt", help="prompt with one {} for the subject")
@click.option("--subject", help="the subject, e.g. 'Eiffel Tower'")
@click.option("--target", help="the new answer, e.g. 'Rome'")
@click.option("--target-true", default=None, help="the current answer, e.g. 'Paris'")
@click.option("--preset", default=None, help="hyperparameter preset name (ftedit/presets)")
@click.option(
    "--hparams", "hparams_file", type=click.Path(dir_okay=False), help="hyperparameters JSON file"
)
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="weights dtype")
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
    from ftedit.requests import EditRequest

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
    ws = c.workspace(model, dtype)
    info = ws.edit([request], _hparams(ws, preset, hparams_file), neighbours=neighbours)
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
@click.argument("prompt")
@click.option("--base", is_flag=True, help="answer as the unedited base model")
@click.option("--max-new-tokens", default=20, show_default=True, type=click.IntRange(1, 2048))
@click.option("--chat", is_flag=True, help="ask PROMPT as a question in the chat template")
@pass_ctx
def generate(c: _Ctx, prompt: str, base: bool, max_new_tokens: int, chat: bool) -> None:
    """Greedy continuation of PROMPT with the current stack of edits (or the base); with
    --chat, the assistant's answer to PROMPT asked as a question."""
    if chat:
        click.echo(c.workspace().generate(prompt, max_new_tokens, base=base, chat=True))
        return
    click.echo(prompt + c.workspace().generate(prompt, max_new_tokens, base=base))


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
    edits = c.store().edits()
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
@click.argument("edit_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the edit as JSON")
@pass_ctx
def show(c: _Ctx, edit_id: int, as_json: bool) -> None:
    """Details of one edit."""
    e = c.store().get(edit_id)
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
    click.echo(f"  hparams: {json.dumps(e.hparams.to_dict(), sort_keys=True)}")


@cli.command()
@click.argument("edit_id", type=int)
@pass_ctx
def revert(c: _Ctx, edit_id: int) -> None:
    """Undo an edit exactly (it stays in the history and can be reapplied)."""
    res = c.store().revert(edit_id)
    click.echo(f"reverted edit #{edit_id}")
    if res.warning:
        click.echo(f"warning: {res.warning}", err=True)


@cli.command()
@click.argument("edit_id", type=int)
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
    from storage.store import version_number

    try:
        v = version_number(version)
    except FteditError as e:
        raise click.BadParameter(str(e)) from None
    active = c.store().checkout(v)
    click.echo(f"checked out v{v}; active edits: {', '.join(f'#{i}' for i in active) or 'none'}")


# ---- comparing, files, integrity -----------------------------------------------------------
@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@pass_ctx
def diff(c: _Ctx, a: str, b: str, as_json: bool) -> None:
    """Compare two edits (like 3 5) or two versions (like v4 v9)."""
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
@click.argument("edit_ids", type=int, nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write")
@pass_ctx
def export(c: _Ctx, edit_ids: tuple[int, ...], out: str) -> None:
    """Write edits as a safetensors file (one edit: its stored file, byte for byte)."""
    if len(edit_ids) == 1:
        from storage.blobs import write_file_atomic

        store = c.store()
        e = store.get(edit_ids[0])
        write_file_atomic(Path(out), store.blobs.get(e.blob_sha256, what=f"edit #{e.id}"))
    else:
        c.workspace().export(list(edit_ids), out)
    click.echo(f"wrote {out}")


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def import_(c: _Ctx, path: str) -> None:
    """Add an edit file made for this base model (validated before anything changes)."""
    info = c.workspace().import_(path)
    click.echo(f"imported {path} as edit #{info.id}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print {ok, problems, orphans, ...}")
@pass_ctx
def verify(c: _Ctx, as_json: bool) -> None:
    """Check blobs, the log, and that the live weights equal a replay; exit 1 if not ok."""
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
@pass_ctx
def save_model(c: _Ctx, directory: str) -> None:
    """Write the current stacked model as a transformers folder (from_pretrained loads it)."""
    click.echo(f"saved to {c.workspace().save_model(directory)}")


@cli.command()
@pass_ctx
def gc(c: _Ctx) -> None:
    """Delete orphan blobs (left by edits interrupted before their commit)."""
    gone = c.store().collect_orphans()
    click.echo(f"removed {len(gone)} orphan blob(s)")


def main() -> None:
    cli(prog_name="ftedit")
