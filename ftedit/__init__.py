"""ftedit: versioned fact editing for language models (ROME's FT / FT-L), with exact revert.

The public API, imported lazily (module ``__getattr__``) so that ``import ftedit`` and the
store-only commands (``ftedit log``) never import torch or transformers::

    from ftedit import Workspace, EditRequest, load_preset
    ws = Workspace()                      # the default model, the store in $FTEDIT_HOME
    info = ws.edit(EditRequest("{} is located in", "The Eiffel Tower", " Rome", " Paris"))
    ws.revert(info.id)                    # exact: the live weights are base + active edits
"""

from __future__ import annotations

import importlib

# name -> the module that defines it (the layers: core, versioning, errors)
_API = {
    "EditRequest": "ftedit.core.requests",
    "FTHyperParams": "ftedit.core.hparams",
    "load_preset": "ftedit.core.hparams",
    "list_presets": "ftedit.core.hparams",
    "load_model": "ftedit.core.models",
    "compute_deltas": "ftedit.core.ft",
    "Deltas": "ftedit.core.deltas",
    "compose": "ftedit.core.deltas",
    "LiveWeights": "ftedit.core.live",
    "Workspace": "ftedit.versioning.workspace",
    "EditInfo": "ftedit.versioning.records",
    "FteditError": "ftedit.errors",
}
__all__ = [
    "Deltas",
    "EditInfo",
    "EditRequest",
    "FTHyperParams",
    "FteditError",
    "LiveWeights",
    "Workspace",
    "compose",
    "compute_deltas",
    "list_presets",
    "load_model",
    "load_preset",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ftedit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
