"""Many facts at once: a ``.jsonl`` or ``.csv`` file (or a table) of edit requests.

Every line is checked before anything is trained, so a file with one bad line is refused as a
whole with that line's number and the fix, and nothing is stored for it. Columns / keys:
``prompt`` (with ``{}``), ``subject``, ``target_new``, ``target_true`` (optional).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from ftedit.core.requests import EditRequest
from ftedit.errors import RequestError

COLUMNS = ("prompt", "subject", "target_new", "target_true")
REQUIRED = COLUMNS[:3]


class FactFileError(RequestError):
    """A facts file or table has a bad line (the message names it); nothing was edited."""


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or not str(v).strip()


def parse_rows(rows: Iterable[tuple[int, object]], where: str, tok=None) -> list[EditRequest]:
    """EditRequests from (line number, mapping) pairs; blank rows are skipped. The first bad
    row raises FactFileError naming ``where`` and its line; ``tok`` also checks lengths."""
    out = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise FactFileError(
                f"{where} line {line}: expected an object with {', '.join(REQUIRED)}"
            )
        if all(_blank(v) for v in row.values()):
            continue
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise FactFileError(
                f"{where} line {line}: unknown field(s) {', '.join(unknown)}; "
                f"the fields are {', '.join(COLUMNS)}"
            )
        missing = [k for k in REQUIRED if _blank(row.get(k))]
        if missing:
            raise FactFileError(f"{where} line {line}: {', '.join(missing)} is empty; fill it in")
        values = {k: None if _blank(row.get(k)) else str(row[k]) for k in COLUMNS}
        try:
            request = EditRequest(**values)
            if tok is not None:
                request.check_length(tok)
        except RequestError as e:
            raise FactFileError(f"{where} line {line}: {e}") from None
        out.append(request)
    if not out:
        raise FactFileError(f"{where} holds no facts: one per line with {', '.join(REQUIRED)}")
    return out


def _jsonl(text: str, where: str) -> list[tuple[int, object]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise FactFileError(
                f"{where} line {n}: not JSON ({e.msg}); one object per line"
            ) from None
    return rows


def _csv(text: str, where: str) -> list[tuple[int, object]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(REQUIRED) <= {f.strip() for f in reader.fieldnames}:
        raise FactFileError(
            f"{where} line 1: the header must name {', '.join(REQUIRED)} (and optionally "
            f"target_true), got {reader.fieldnames}"
        )
    rows = []
    for row in reader:
        if None in row:  # more cells than header names
            raise FactFileError(f"{where} line {reader.line_num}: more cells than the header has")
        rows.append((reader.line_num, {k.strip(): v for k, v in row.items()}))
    return rows


def read_facts(path: str | Path, tok=None) -> list[EditRequest]:
    """Every request of a ``.jsonl`` / ``.csv`` file, all validated (``tok``: lengths too)."""
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".csv"):
        raise FactFileError(f"{p.name}: a facts file ends in .jsonl or .csv")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FactFileError(f"cannot read {p}: {e}") from None
    rows = _jsonl(text, p.name) if p.suffix.lower() == ".jsonl" else _csv(text, p.name)
    return parse_rows(rows, p.name, tok)


def table_requests(records: Sequence[dict], tok=None) -> list[EditRequest]:
    """Requests from a table's rows (the app's editable table; row 1 is the first fact)."""
    return parse_rows(enumerate(records, 1), "the table", tok)
