"""Compact stored edits: the last step of making an edit (hparams ``store_as``).

The trained float32 delta is replaced by what its stored form reconstructs, BEFORE it is
applied or scored, so the delta the live model carries, the one a replay rebuilds and the one
an evaluation scores are the same bits (DESIGN.md: the delta applied is exactly the stored
one). The forms and their exact reconstruction live in ``storage/codec.py`` (a reader needs
them without ftedit's core: the one storage module the core imports); ``storage/editfile.py``
writes them as edit file format 2, and :func:`ftedit.versioning.stored.stored` gives the
workspace the deltas read back from those bytes.
"""

from __future__ import annotations

from ftedit.core.deltas import Deltas
from storage import codec  # pure tensor arithmetic: the forms' one definition


def compact(deltas: Deltas, form: str) -> Deltas:
    """The deltas that storing ``deltas`` in ``form`` applies (``form="dense"``: unchanged).
    For scoring a form without storing it (bench/bench_store.py, evaluations)."""
    if codec.parse_form(form)[0] == "dense":
        return deltas
    return Deltas({k: codec.roundtrip(v, form) for k, v in deltas.items()})
