"""`ftedit` commands that only read or re-label the store (log, events, show, revert, reapply,
checkout, gc, recover): they never import torch or load a model."""

from __future__ import annotations

import json
import sys

import click

from ftedit.cli_common import ID, _Ctx, _fmt, _json, pass_ctx
from ftedit.errors import FteditError


@click.command("log")
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


@click.command()
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


@click.command()
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


@click.command()
@click.argument("edit_id", type=ID)
@pass_ctx
def revert(c: _Ctx, edit_id: int) -> None:
    """Undo an edit exactly (it stays in the history and can be reapplied)."""
    res = c.store().revert(edit_id)
    click.echo(f"reverted edit #{edit_id}")
    if res.warning:
        click.echo(f"warning: {res.warning}", err=True)


@click.command()
@click.argument("edit_id", type=ID)
@pass_ctx
def reapply(c: _Ctx, edit_id: int) -> None:
    """Put a reverted edit back on the stack."""
    c.store().reapply(edit_id)
    click.echo(f"reapplied edit #{edit_id}")


@click.command()
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


@click.command()
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


@click.command()
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
