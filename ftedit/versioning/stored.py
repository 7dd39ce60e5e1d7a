"""What an edit stores is what it applies: the edit file bytes, and the deltas read back from them.

The compact forms (hparams ``store_as``, :mod:`storage.codec`) round their delta; the workspace
applies the delta these bytes hold, never the trained one, so what is live now is by
construction what every later replay of the blob rebuilds (DESIGN.md's invariant).
"""

from __future__ import annotations

from collections.abc import Mapping

from ftedit.core.deltas import Deltas
from storage import codec, editfile


def stored(deltas: Deltas, form: str, metadata: Mapping[str, str]) -> tuple[Deltas, bytes]:
    """The edit file bytes for ``deltas`` in ``form`` and the deltas those bytes hold: the
    ones to apply. Read back from the bytes themselves, so what is applied now is by
    construction what every later replay of the blob rebuilds."""
    data = editfile.encode(deltas, metadata, form)
    if codec.parse_form(form)[0] == "dense":
        return deltas, data
    return Deltas(editfile.decode(data)[0]), data
