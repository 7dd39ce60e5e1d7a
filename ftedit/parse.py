"""Strict parsing of what people type: edit ids, versions, numbers, text.

Python's ``int()`` and ``str.isdigit()`` take any Unicode digit (``int("٣") == 3``, and
``"²".isdigit()`` is True but ``int("²")`` raises), and database integers stop at 2**63 - 1
(SQLite raises OverflowError past it). Everything a person types goes through here first, so a
bad value is refused with one line naming it, before anything is read or changed.
"""

from __future__ import annotations

import math
import re

from ftedit.errors import FteditError

MAX_ID = 2**63 - 1  # SQLite and PostgreSQL BIGINT
_ID = re.compile(r"#?([0-9]+)", re.ASCII)
_VERSION = re.compile(r"[vV]?([0-9]+)", re.ASCII)
# A plain decimal number in ASCII: no '_' separators, no hex, no Unicode digits, no inf/nan.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class InputError(FteditError, ValueError):
    """A typed value (id, version, number, text) is malformed; says what a good one looks like."""


def _bounded(n: int, what: str, example: str) -> int:
    if not 1 <= n <= MAX_ID:
        raise InputError(f"{what} must be between 1 and {MAX_ID} (e.g. {example}), got {n}")
    return n


def edit_id(value) -> int:
    """An edit id from 3, "3" or "#3" (ASCII digits only, 1 .. 2**63 - 1)."""
    if isinstance(value, bool):
        raise InputError(f"an edit id is a number like 3, got {value!r}")
    if isinstance(value, int):
        return _bounded(value, "an edit id", "3")
    if isinstance(value, float) and value.is_integer():
        return _bounded(int(value), "an edit id", "3")
    m = _ID.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise InputError(f"an edit id is a number like 3 (ASCII digits), got {value!r}")
    return _bounded(int(m.group(1)), "an edit id", "3")


def version(value) -> int:
    """A version (event id) from 12, "12" or "v12" (ASCII digits only, 1 .. 2**63 - 1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _bounded(value, "a version", "v12")
    m = _VERSION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise InputError(f"a version is an event id like 12 or v12 (ASCII digits), got {value!r}")
    return _bounded(int(m.group(1)), "a version", "v12")


def ref(value) -> str:
    """One side of a comparison: an edit id ("5", "#5") or a version ("v12"), normalised."""
    text = str(value).strip() if isinstance(value, (str, int)) else None
    if text and text[0] in "vV":
        return f"v{version(text)}"
    if text and _ID.fullmatch(text):
        return str(edit_id(text))
    raise InputError(f"compare edit ids (e.g. 5) or versions (e.g. v12), got {value!r}")


def number(value, name: str, *, integer: bool = False, lo: float = 0.0, hi: float = 1e6):
    """A finite number in [lo, hi] from a number or ASCII decimal text (a web form field)."""
    kind = "a whole number" if integer else "a number"
    bad = InputError(f"{name} must be {kind} between {lo:g} and {hi:g}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value.strip()):
            raise bad
        value = float(value.strip())
    if not math.isfinite(value) or not lo <= value <= hi:
        raise bad
    if integer:
        if value != int(value):
            raise bad
        return int(value)
    return float(value)


def text(value: str, name: str) -> str:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates: non-UTF-8 command-line
    bytes arrive as surrogate escapes), naming the argument."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{name} is not valid UTF-8 text (check the terminal's or file's encoding)"
        ) from None
    return value
