"""`ftedit` commands that load the model: edit, generate, diff, export (of several edits; one
edit is its stored file, no model), import, verify, save-model. Torch is imported inside each
command, never at module level, so `ftedit log` stays fast."""

from __future__ import annotations

from pathlib import Path

import click

from ftedit.cli_common import (
    DTYPE_HELP,
    DTYPES,
    ID,
    MODEL_HELP,
    TEXT,
    _Ctx,
    _dtype_option,
    _fmt,
    _hparams,
    _json,
    pass_ctx,
)


@click.command()
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
    "--chat-texts",
    is_flag=True,
    help="also train each fact asked in the chat template, so the edit shows in chat answers "
    "(slower: more steps, longer texts)",
)
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
    chat_texts,
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

    def chosen(ws):
        hp = _hparams(ws, preset, hparams_file)
        return hp.replace(chat_texts=True) if chat_texts else hp

    if facts:
        ws = c.workspace(model, dtype)
        edit_file(ws, facts, batch, chosen(ws), as_json, neighbours)
        return
    request = EditRequest(prompt, subject, target, target_true)
    if preset and hparams_file:
        raise click.UsageError("give --preset or --hparams, not both")
    # A bad hparams file is refused before the model loads; lengths before any scoring.
    hp = chosen(None) if preset or hparams_file else None
    ws = c.workspace(model, dtype)
    info = ws.edit([request], hp or chosen(ws), neighbours=neighbours)
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command("import")
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


@click.command()
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


@click.command("save-model")
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
