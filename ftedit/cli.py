"""`ftedit` console script (also `python -m ftedit`).

Commands that only read or re-label the store (log, events, show, revert, reapply, checkout,
export of one edit, gc) never import torch or load a model: the next process that opens the
model replays the store. Commands that need weights load the model lazily.
"""

from __future__ import annotations

import click

from ftedit import cli_model, cli_store
from ftedit.cli_common import DTYPE_HELP, DTYPES, MODEL_HELP, _Ctx, _Group


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


cli.add_command(cli_model.edit)
cli.add_command(cli_model.generate)
cli.add_command(cli_model.diff)
cli.add_command(cli_model.export)
cli.add_command(cli_model.import_)
cli.add_command(cli_model.verify)
cli.add_command(cli_model.save_model)
cli.add_command(cli_store.log_)
cli.add_command(cli_store.events)
cli.add_command(cli_store.show)
cli.add_command(cli_store.revert)
cli.add_command(cli_store.reapply)
cli.add_command(cli_store.checkout)
cli.add_command(cli_store.gc)
cli.add_command(cli_store.recover)


def main() -> None:
    cli(prog_name="ftedit")
