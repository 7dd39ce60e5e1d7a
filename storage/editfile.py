"""The edit file format: a safetensors file of float32 deltas plus string metadata.

Tensors are keyed by the model's own parameter names. ``__metadata__`` holds the format
version, the base fingerprint (with the sha256 of every touched base tensor), the request(s)
and the hyperparameters, and no timestamp, so identical edits give identical bytes. The bytes
are written here (sorted keys, fixed JSON separators) rather than by ``safetensors.save``
so they are stable by construction; any safetensors reader loads them.

Format 1 stores every delta dense (float32 tensors named like the parameters). Format 2
stores them in a compact form (``storage/codec.py``: low rank or sign code): parameter ``p``
becomes parts ``p.u`` / ``p.v`` (or ``p.sign`` / ``p.scale``; a tensor left dense keeps its
name), and ``__metadata__["encoding"]`` maps every parameter to its form and shape. Reading a
format 2 file reconstructs the float32 deltas; that reconstruction is the edit (the writer
applies the same one), so live == replay holds bit for bit whichever format an edit has.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from ftedit.errors import ImportRefusedError
from storage import codec

FORMAT = "ftedit.edit"
FORMAT_VERSION = "1"  # dense float32; what encode(..., form="dense") still writes
COMPACT_VERSION = "2"  # compact parts + an "encoding" entry (encode(..., form="lowrank:8"))
READ_VERSIONS = (FORMAT_VERSION, COMPACT_VERSION)
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.uint8: "U8"}
REQUIRED_KEYS = ("format", "format_version", "base", "base_tensors", "requests", "hparams")
# What each JSON metadata value must decode to (checked before anything indexes into it).
_META_TYPES = {"base": dict, "base_tensors": dict, "requests": list, "hparams": dict}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def edit_metadata(
    base: Mapping,
    base_tensors: Mapping[str, str],
    requests: list[dict],
    hparams: Mapping,
    **extra: str,
) -> dict[str, str]:
    """The ``__metadata__`` block: every value a JSON string (safetensors allows only strings)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": _dumps(dict(base)),
        "base_tensors": _dumps(dict(base_tensors)),
        "requests": _dumps(list(requests)),
        "hparams": _dumps(dict(hparams)),
    }
    meta.update(extra)
    return meta


def encode(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], form: str = "dense"
) -> bytes:
    """Deterministic safetensors bytes: tensors in name order, sorted JSON header.
    ``form="dense"``: format 1, float32 tensors. Any other form: format 2 (see
    :func:`encode_compact`); what the edit applies is then ``decode`` of these bytes."""
    if codec.parse_form(form)[0] != "dense":
        return encode_compact(tensors, metadata, form)
    dense = {n: t.detach().to(device="cpu", dtype=torch.float32) for n, t in tensors.items()}
    return _safetensors_bytes(dense, metadata)


def encode_compact(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], form: str
) -> bytes:
    """Format 2: every tensor stored as ``codec.encode(t, form)``'s parts, named ``name +
    suffix``, with ``encoding`` = {name: {"form", "shape"}} added to the metadata."""
    parts: dict[str, torch.Tensor] = {}
    encoding = {}
    for name in sorted(tensors):
        t = tensors[name]
        encoding[name] = {"form": codec.form_for(t, form), "shape": list(t.shape)}
        parts.update({name + sfx: p for sfx, p in codec.encode(t, form).items()})
    meta = {**metadata, "format_version": COMPACT_VERSION, "encoding": _dumps(encoding)}
    return _safetensors_bytes(parts, meta)


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(device="cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = _dumps(header).encode()
    head += b" " * (-len(head) % 8)  # safetensors pads the header to 8-byte alignment
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def read_file(path: str | Path, max_bytes: int) -> bytes:
    """An edit file's bytes, reading no more than its header declares and ``max_bytes`` allows.

    The 8-byte header length and the tensors' data offsets are checked against the limit
    before the rest is read, so ``/dev/zero``, a FIFO or a file that declares terabytes is
    refused after a few bytes instead of filling memory.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            first = f.read(8)
            if len(first) < 8:
                raise ImportRefusedError("not a safetensors file: shorter than 8 bytes")
            (n,) = struct.unpack("<Q", first)
            if n == 0 or n > min(MAX_HEADER, max_bytes):
                raise ImportRefusedError(
                    f"not a safetensors file: it declares a {n:,}-byte header (the limit is "
                    f"{min(MAX_HEADER, max_bytes):,})"
                )
            head = f.read(n)
            if len(head) < n:
                raise ImportRefusedError("not a safetensors file: header length runs past the end")
            end = _data_end(read_header(first + head))
            if 8 + n + end > max_bytes:
                raise ImportRefusedError(
                    f"the file declares {8 + n + end:,} bytes; edit files for this model are at "
                    f"most {max_bytes:,} bytes"
                )
            body = f.read(end + 1)
    except OSError as e:
        raise ImportRefusedError(f"cannot read {path}: {e.strerror or e}") from None
    if len(body) != end:
        raise ImportRefusedError(
            f"not a safetensors file: its header declares {end:,} bytes of tensors, the file "
            f"holds {'more' if len(body) > end else f'{len(body):,}'}"
        )
    return first + head + body


def _data_end(header: dict) -> int:
    """Where the last tensor's bytes end, after checking every entry's data_offsets."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise ImportRefusedError(f"not a safetensors file: tensor {name!r} has bad offsets")
        end = max(end, offsets[1])
    return end


def read_header(data: bytes) -> dict:
    """The parsed JSON header (tensor entries and ``__metadata__``) without loading tensors."""
    if len(data) < 8:
        raise ImportRefusedError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ImportRefusedError("not a safetensors file: header length runs past the end")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImportRefusedError(f"not a safetensors file: bad header ({e})") from None
    if not isinstance(header, dict):
        raise ImportRefusedError("not a safetensors file: header is not an object")
    return header


def decode(
    data: bytes, shapes: Mapping[str, tuple[int, ...]] | None = None, packed: bool = False
) -> tuple[dict[str, torch.Tensor | codec.Packed], dict[str, str]]:
    """Tensors and metadata of an edit file (callers check sha256 first). ``shapes`` (the
    model's parameter shapes by name), when given, is checked against a compact file's encoding
    before anything is rebuilt, so a crafted file cannot ask for a huge allocation. ``packed``:
    a compact file's tensors come as :class:`codec.Packed` (checked, not rebuilt)."""
    header = read_header(data)
    meta = header.get("__metadata__") or {}
    try:
        tensors = st_load(data)
    except SafetensorError as e:
        raise ImportRefusedError(f"not a readable safetensors file: {e}") from None
    if meta.get("format_version") == COMPACT_VERSION:
        tensors = decode_compact(tensors, meta, shapes, packed)
    return tensors, meta


def decode_compact(
    parts: Mapping[str, torch.Tensor],
    meta: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    packed: bool = False,
) -> dict[str, torch.Tensor | codec.Packed]:
    """Format 2: the float32 deltas rebuilt from their parts (``codec.reconstruct``; with
    ``packed``, a :class:`codec.Packed` each, a dense part as its tensor); refuses
    a file whose parts do not match its ``encoding`` exactly (missing, extra, wrong shape), or,
    with ``shapes``, names a tensor the model lacks or a shape other than the model's."""
    try:
        encoding = json.loads(meta.get("encoding", "null"))
    except json.JSONDecodeError:
        raise ImportRefusedError("edit file metadata 'encoding' is not valid JSON") from None
    if not isinstance(encoding, dict):
        raise ImportRefusedError("format 2 edit file lacks its 'encoding' metadata")
    if shapes is not None:
        _check_shapes(encoding, shapes)
    out, used = {}, set()
    for name, enc in sorted(encoding.items()):
        try:
            form, shape = enc["form"], enc["shape"]
            names = [name + sfx for sfx in codec.SUFFIXES[codec.parse_form(form)[0]] or ("",)]
            held = {n[len(name) :]: parts[n] for n in names}
            keep = packed and codec.parse_form(form)[0] != "dense"  # dense: nothing to save
            out[name] = (codec.Packed if keep else codec.reconstruct)(held, form, shape)
        except (KeyError, TypeError, ValueError) as e:
            raise ImportRefusedError(
                f"edit file tensor {name}: bad compact encoding ({e})"
            ) from None
        used.update(names)
    extra = sorted(set(parts) - used)
    if extra:
        raise ImportRefusedError(f"edit file holds tensors its encoding does not list: {extra}")
    return out


def _check_shapes(encoding: dict, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every encoded tensor is a parameter of the model, with the model's shape (read from the
    ``encoding`` metadata alone: nothing is allocated before this passes)."""
    for name, enc in sorted(encoding.items()):
        if name not in shapes:
            raise ImportRefusedError(f"edit file tensor {name} is not a parameter of the model")
        shape = enc.get("shape") if isinstance(enc, dict) else None
        if not (
            isinstance(shape, list)
            and all(type(n) is int for n in shape)
            and tuple(shape) == tuple(shapes[name])
        ):
            raise ImportRefusedError(
                f"edit file tensor {name} has shape {shape}, the model's is {list(shapes[name])}"
            )


def parse_metadata(meta: Mapping[str, str]) -> dict:
    """Decode the JSON values of an edit file's metadata; refuse files that are not edits."""
    if not isinstance(meta, Mapping):
        raise ImportRefusedError("not an ftedit edit file: its metadata is not an object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing or meta.get("format") != FORMAT:
        raise ImportRefusedError(
            f"not an ftedit edit file (metadata lacks {missing or ['format=' + FORMAT]}); "
            "export edits with `ftedit export`"
        )
    if meta["format_version"] not in READ_VERSIONS:
        raise ImportRefusedError(
            f"edit file format version {meta['format_version']} is not supported "
            f"(this ftedit reads versions {', '.join(READ_VERSIONS)}); upgrade ftedit"
        )
    out = {"format": meta["format"], "format_version": meta["format_version"]}
    for key in REQUIRED_KEYS[2:]:
        try:
            out[key] = json.loads(meta[key])
        except (TypeError, json.JSONDecodeError):
            raise ImportRefusedError(f"edit file metadata {key!r} is not valid JSON") from None
        if not isinstance(out[key], _META_TYPES[key]):
            kind = "an object" if _META_TYPES[key] is dict else "a list"
            raise ImportRefusedError(
                f"edit file metadata {key!r} must be {kind}, got {type(out[key]).__name__}"
            )
    if not all(isinstance(v, str) for v in out["base_tensors"].values()):
        raise ImportRefusedError("edit file metadata 'base_tensors' must map names to sha256s")
    for key, value in meta.items():
        out.setdefault(key, value)
    return out
