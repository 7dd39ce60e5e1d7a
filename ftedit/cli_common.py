"""Shared pieces of the `ftedit` CLI: the context (the store opened and the model loaded
lazily), parameter types, options and JSON output. Nothing here imports torch."""

from __future__ import annotations

import functools
import json
import math

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
