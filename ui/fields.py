"""The Edit tab's Advanced fields -> FTHyperParams: a preset with what the visitor typed laid
over it, each field parsed strictly and bounded (no gradio here: handlers turn the errors into
``gr.Error`` at the edge)."""

from __future__ import annotations

from ftedit.core.hparams import FTHyperParams, load_preset
from ftedit.errors import HParamsError
from ftedit.parse import InputError, number
from ui import state

AUTO = "auto"  # the preset choice meaning Workspace.default_hparams()
MAX_LAYER = 10_000  # no model has more blocks; bigger numbers are typos


def parse_layers(text) -> tuple[int, ...]:
    items = text if isinstance(text, (list, tuple)) else str(text).replace(",", " ").split()
    try:
        return tuple(number(x, "a layer", integer=True, hi=MAX_LAYER) for x in items)
    except InputError:
        raise HParamsError(
            f"layers are block numbers separated by commas, like '4, 5', got {text!r}"
        ) from None


def blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def preset_hparams(preset: str | None) -> FTHyperParams:
    if not preset or preset == AUTO:  # the architecture's default: the same for every visitor
        return state.shared_workspace().default_hparams()
    return load_preset(preset)


def build_hparams(
    preset=AUTO,
    layers=None,
    lr=None,
    num_steps=None,
    norm_constraint=None,
    objective=None,
    chat_texts=False,
) -> FTHyperParams:
    """The preset with the advanced fields laid over it; blank fields keep the preset's value.
    ``norm_constraint`` 0 means unconstrained FT (no box). ``chat_texts`` (the "Also train it
    as a chat answer" box): only a real True turns it on, anything else leaves the preset's."""
    changes = {}
    if layers not in (None, "") and str(layers).strip():
        changes["layers"] = parse_layers(layers)
    # Number fields arrive as whatever the client sent (strings, lists, inf, 1e300): each is
    # parsed strictly, named, and bounded before it reaches the hyperparameters.
    if not blank(lr):
        # negatives reach FTHyperParams, which says "lr must be > 0"
        changes["lr"] = number(lr, "Learning rate (lr)", lo=-1e6, hi=10.0)
    if not blank(num_steps):
        changes["num_steps"] = number(num_steps, "Max steps", integer=True, lo=1, hi=100_000)
    if not blank(norm_constraint):
        box = number(norm_constraint, "Norm constraint", hi=1e3)
        changes["norm_constraint"] = box or None
    if objective:
        changes["objective"] = objective
    if chat_texts is True:
        changes["chat_texts"] = True
    return preset_hparams(preset).replace(**changes)
