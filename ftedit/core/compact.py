"""Compact stored edits: the last step of making an edit (hparams ``store_as``).

The trained float32 delta is replaced by what its stored form reconstructs, BEFORE it is
applied or scored, so the delta the live model carries, the one a replay rebuilds and the one
an evaluation scores are the same bits (DESIGN.md: the delta applied is exactly the stored
one). The forms and their exact reconstruction live in ``storage/codec.py`` (a reader needs
them without ftedit's core); ``storage/editfile.py`` writes them as edit file format 2.
"""

from __future__ import annotations

from collections.abc import Mapping

from ftedit.core.deltas import Deltas
from storage import codec, editfile


def compact(deltas: Deltas, form: str) -> Deltas:
    """The deltas that storing ``deltas`` in ``form`` applies (``form="dense"``: unchanged).
    For scoring a form without storing it (bench/bench_store.py, evaluations)."""
    if codec.parse_form(form)[0] == "dense":
        return deltas
    return Deltas({k: codec.roundtrip(v, form) for k, v in deltas.items()})


def stored(deltas: Deltas, form: str, metadata: Mapping[str, str]) -> tuple[Deltas, bytes]:
    """The edit file bytes for ``deltas`` in ``form`` and the deltas those bytes hold: the
    ones to apply. Read back from the bytes themselves, so what is applied now is by
    construction what every later replay of the blob rebuilds."""
    data = editfile.encode(deltas, metadata, form)
    if codec.parse_form(form)[0] == "dense":
        return deltas, data
    return Deltas(editfile.decode(data)[0]), data
