"""Where a benchmark's figures go: OUT/<stem>.md (the table printed) and OUT/<stem>.json."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: str | Path | None, stem: str, md: str, data) -> None:
    """``out``/``stem``.md and .json (indented); nothing when ``out`` is None."""
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
