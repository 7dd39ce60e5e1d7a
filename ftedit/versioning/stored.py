"""An edit's stored form for one model: the edit file bytes it writes, the deltas read back
from a blob (checked against this model), and the edits a store keeps under other dtypes.

What an edit stores is what it applies: the compact forms (hparams ``store_as``, :mod:`storage.codec`) round their delta; the workspace
applies the delta these bytes hold, never the trained one, so what is live now is by
construction what every later replay of the blob rebuilds (DESIGN.md's invariant). A compact
form's deltas are held packed (:class:`storage.codec.Packed`, rebuilt when summed): a rank-32
edit of four 576 x 1536 matrices keeps 0.5 MB in memory instead of 14 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ftedit.core.deltas import Deltas
from ftedit.errors import IntegrityError
from storage import codec, editfile
from storage.records import StoredEdit
from storage.store import Store


def stored(deltas: Deltas, form: str, metadata: Mapping[str, str]) -> tuple[Deltas, bytes]:
    """The edit file bytes for ``deltas`` in ``form`` and the deltas those bytes hold: the
    ones to apply. Read back from the bytes themselves, so what is applied now is by
    construction what every later replay of the blob rebuilds."""
    data = editfile.encode(deltas, metadata, form)
    if codec.parse_form(form)[0] == "dense":
        return deltas, data
    return Deltas(editfile.decode(data, packed=True)[0]), data


def read_deltas(store: Store, edit: StoredEdit, base_sha: Callable[[str], str]) -> Deltas:
    """An edit's deltas straight from its blob: sha256 (the blob store), tensor names (its row)
    and each untouched base tensor (``base_sha(name)``: this model's) checked."""
    label = f"edit #{edit.id}"
    data = store.blobs.get(edit.blob_sha256, what=label)
    tensors, meta = editfile.decode(data, packed=True)
    base_tensors = editfile.parse_metadata(meta)["base_tensors"]
    if sorted(tensors) != sorted(edit.tensor_names):
        raise IntegrityError(f"{label}: its blob holds other tensors than its row lists")
    for name in tensors:
        if base_tensors.get(name) != base_sha(name):
            raise IntegrityError(f"{label} was made for another base model ({name} differs)")
    return Deltas(tensors)


def other_dtype_notice(store: Store, fp: dict) -> str | None:
    """One line when the store holds edits of this model made in another dtype (they are not
    loaded: a delta was trained against the weights as rounded to that dtype), else None."""
    from ftedit.core.models import DTYPES

    found = []
    for dtype in sorted(DTYPES):
        bid = None if dtype == fp["dtype"] else store.base_id({**fp, "dtype": dtype}, create=False)
        if bid is not None and (n := len(store.edits(bid))):
            found.append((n, dtype))
    if not found:
        return None
    made = " and ".join(f"{n} edit{'s' * (n != 1)} made in {d}" for n, d in found)
    return (
        f"this store has {made} on {fp['name']}; you opened it in {fp['dtype']}, so they are "
        f"not shown: pass --dtype {found[0][1]} (FTEDIT_DTYPE={found[0][1]} for the app)"
    )
