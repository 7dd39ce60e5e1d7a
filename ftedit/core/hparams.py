"""FT / FT-L hyperparameters: one frozen dataclass, JSON presets in ``ftedit/core/presets``."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftedit.errors import HParamsError

PRESETS_DIR = Path(__file__).parent / "presets"
OBJECTIVES = ("prompt_last", "target_new")
# The stored forms (storage/codec.FORM_RE, repeated here: the core does not import storage).
_STORE_AS = re.compile(r"dense|sign|lowrank:[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class FTHyperParams:
    """Everything that decides what an edit computes. Saved with every edit."""

    # Which transformer blocks to edit (0-based); ROME's FT-L edits block 0 of GPT-2 XL.
    layers: tuple[int, ...] = (0,)
    # Parameter-name template; the parameters it names, matched at dotted boundaries (weight and
    # bias), are trained.
    rewrite_module_tmp: str = "model.layers.{}.mlp.down_proj"
    # Adam learning rate.
    lr: float = 5e-4
    # Upper bound on optimisation epochs (ROME: 25).
    num_steps: int = 25
    # Adam weight decay (ROME: 0).
    weight_decay: float = 0.0
    # Half-width of the L-inf box around the pre-edit weights; None = unconstrained FT.
    norm_constraint: float | None = 5e-4
    # Texts per optimiser step; ROME uses 64, which for one request means one batch.
    batch_size: int = 64
    # "prompt_last": ROME's loss, every target token scored at the last prompt position.
    # "target_new": teacher-forced NLL over the whole target (each token at its own position).
    objective: str = "prompt_last"
    # Stop once the epoch's mean loss falls below this; a batch below it takes no step (ROME: 1e-2).
    early_stop_loss: float = 1e-2
    # Random short prefixes prepended to the prompt (ROME's generalisation trick); 0 = off.
    num_prefixes: int = 0
    # Tokens in each random prefix, sampled (top-k 5) from the model itself.
    prefix_len: int = 5
    # Weight of the keep penalty (keep.kl_texts): KL to the pre-edit next-token distribution on
    # ROME's essence prompt "{subject} is a" and on the relation prompt with stand-in subjects,
    # plus the rise of log p(target_new) on the latter, so the edit keys on the subject; 0 = off.
    kl_factor: float = 0.0
    # How many other subjects (ftedit/core/data/keep_subjects.txt, the nearest to the request's
    # subject by hidden state after the top edited block) fill the relation prompt in the keep
    # penalty; 0 = the stand-ins "it", "this one", "the other one". Used if kl_factor > 0
    # or keep_nullspace.
    keep_subjects: int = 0
    # The block after which the pool's subjects are compared with the request's to choose the
    # nearest (keep_subjects, keep_subject_keys, the neighbour probes); None = the one under
    # the lowest edited block: no edit of the edited layers changes a weight the pool's vectors
    # read there, so they are computed once per model, not again after every applied edit
    # (1,858 subjects: ~15 s on one CPU thread). Ranking after block 3 or 7 chose the same on
    # dev (bench/results/dev-tuning.md, ninth round).
    keep_rank_layer: int | None = None
    # Seed for anything random (prefix sampling); equal seeds give bit-identical deltas.
    seed: int = 0
    # Free-form note shown in the UI (e.g. where a preset's numbers come from).
    note: str = field(default="", compare=False)
    # Null-space projection strength s (ftedit/core/nullspace.py, after AlphaEdit): each optimiser
    # step's change of an edited matrix is multiplied on its input side by
    # U diag(1 / (1 + s * e / mean(e))) U^T, from the eigenvectors U and eigenvalues e of the
    # matrix's input second moment over generic text, so outputs on frequent inputs (the
    # neighbours' keys) barely move; computed once per base model and cached; 0 = off.
    nullspace: float = 0.0
    # Keep the keep prompts exactly (ftedit/core/nullspace.py): project every step's change of the
    # edited matrices off the inputs they see on the relation prompt filled with the
    # ``keep_subjects`` nearest other subjects (the keep penalty's prompts), computed once per
    # edit, so those prompts' outputs stay as they were at no cost per step (no KL pass).
    keep_nullspace: bool = False
    # With keep_nullspace: also keep the last-token input of this many nearest pool subjects
    # read alone (the key any prompt starting with that subject has there), one key each.
    keep_subject_keys: int = 0
    # With keep_nullspace: also keep the inputs at a multi-word subject's tokens before its last
    # ("Airbus", "Airbus A", "Airbus A3" of "Airbus A350"), alone and in the prompt: other
    # subjects that start the same way ("Airbus A380", a CounterFact neighbour) give those keys.
    keep_subject_parts: bool = False
    # With keep_nullspace: also keep the last-token input of this many sibling subjects, a
    # multi-token subject with its last token swapped for the model's likeliest others after
    # the rest ("Airbus A3" + "80" for "Airbus A350"), alone and in the prompt: the key of a
    # subject that differs only at its end is close to the edited one's.
    keep_subject_siblings: int = 0
    # With keep_nullspace, for an edit stacked on earlier ones (compute_deltas' ``prior``): also
    # keep the last-token input of this many earlier edits' subjects, each in its own prompt,
    # those nearest the edited subject (at keep_rank_layer), so a new edit leaves the keys the
    # earlier ones act on alone. Earlier edits of the edited subject itself are not kept.
    keep_prior_edits: int = 0
    # With keep_prior_edits: also keep those earlier edits' inputs where their answer is read,
    # their prompt then target teacher-forced, from the prompt's last token to the target's
    # last but one (zsRE scores every target token so; the subject key alone leaves the
    # answer's later tokens free to move). One key per target token and edited layer.
    keep_prior_answers: bool = False
    # With keep_prior_edits: at most this share of an edited matrix's input width goes to the
    # earlier edits' keys (their strongest directions outside the keep prompts' own; 0: no
    # limit). Each kept key takes a direction the edit may not use: without a limit enough
    # earlier edits would fill the width and leave a new edit nothing to act on. The default
    # takes 0.33: at 0.67, 300 earlier zsRE edits left a new subject's key 0.36 of its norm to
    # act on and the new edits stopped taking (bench/stack_room.py); past ~450 a third forgets
    # the older edits instead (bench/forgetting.py; bench/README.md section 4).
    keep_prior_share: float = 0.0
    # With keep_prior_share and subject_keys_only: hold the earlier edits' keys the share leaves
    # out softly instead of not at all: the subject keys a step acts on are first multiplied by
    # (I + s R R^T / mean)^-1, R those left-out keys (outside the kept directions) and the mean
    # their squared singular values' over the input width, s this strength (0: off). MEMIT and
    # AlphaEdit weight earlier keys so (their C^-1 k): the edit moves each left-out key the
    # less, the more the earlier edits use its direction, where the cap alone leaves all of
    # them free (bench/forgetting.py: past the cap the older edits are forgotten). No cost per
    # step: only the subject basis changes.
    keep_prior_soft: float = 0.0
    # With keep_prior_edits: once an edit stacked on earlier ones is trained, this many
    # alternations of the box and the projection off the whole keep basis (the earlier edits'
    # keys and the keep prompts'), then that projection and each output row scaled into the
    # box (0: off). The clamp after every projected step puts part of the change back on those
    # keys (bench/prior_leak.py: 0.3-1.9 % of |d|^2 on the earlier edits' directions after
    # 10-30 CounterFact dev edits); a scaled row stays off them, so the edit leaves every kept
    # key exactly as it was. The alternations first bring the change near both sets: on dev,
    # scaling the rows at once kept 0.47 of its norm, after 20 alternations 0.90. An edit with
    # no earlier edits is unchanged.
    keep_prior_exact: int = 0
    # With keep_prior_edits and subject_keys_only: widen the box of an edit stacked on earlier
    # ones by as much as the earlier edits' keys took of its subject's keys, at most this
    # factor (0: off). Every step acts only on the part of the subject's keys outside the keep
    # basis; the more earlier edits are kept, the less of the keys is left, the larger the
    # weights the same change of output needs, and the box stops it: 300 zsRE edits in, the
    # subject key keeps ~0.35 of its norm against ~0.85 with none, and a new edit takes 62 %
    # of its answer tokens instead of 100 (bench/stack_room.py, stop 28). The factor is the
    # ratio of those two shares (keys off the edit's own keep basis, off it and the earlier
    # edits'), per edited layer; the kept keys stay exact whatever the box. An edit with no
    # earlier edits is unchanged.
    keep_prior_box: float = 0.0
    # Keep every step's change only on the edited subject's last-token inputs (orthogonal to the
    # keep prompts' with keep_nullspace): ROME's localisation on the subject's key.
    subject_keys_only: bool = False
    # Keep the box by scaling each output row of the delta (W - W0) down to the box instead of
    # clamping each weight: a row scaled stays in the span the projections above chose (an
    # element-wise clamp moves the clamped entries out of it: measured on dev, half the
    # delta's norm ended outside the subject's keys). Needs norm_constraint.
    box_rows: bool = False
    # With a projection and a box: first alternate this many times between the clamp and the
    # projection of the whole delta (both convex sets: it approaches their intersection), so
    # the final clamp moves less of the delta out of the span (box_rows: the rows shrink less).
    box_iters: int = 0
    # With subject_keys_only: also span the subject's key behind this many fixed generic
    # contexts (ftedit/core/data/contexts.txt; no training on them, one forward pass each), the
    # keys a paraphrase that puts other words before the subject gives the edited matrices.
    subject_contexts: int = 0
    # How the edit is stored, as the last step of making it: "dense" (float32, edit file
    # format 1), "lowrank:R" (rank-R truncated SVD, bfloat16 factors) or "sign" (1 bit per
    # weight + a per-row scale); format 2. The applied delta is the stored form's exact
    # reconstruction (storage/codec.py), so quality is that of the compact delta.
    store_as: str = "dense"
    # Also train each request asked through the tokenizer's chat template ("Finish this
    # sentence: <prompt>", ftedit/core/chat.py TRAIN_ASK), the target as the first words of the
    # assistant's answer, so the edit shows when an instruct model is asked; needs a template.
    chat_texts: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, f.type, getattr(self, f.name))
            if f.type in ("int", "int | None") and isinstance(getattr(self, f.name), float):
                object.__setattr__(self, f.name, int(getattr(self, f.name)))
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise HParamsError("layers must name at least one layer, got an empty list")
        if any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            raise HParamsError(
                f"layers must be distinct non-negative ints, got {list(self.layers)}"
            )
        if self.rewrite_module_tmp.count("{}") != 1:
            raise HParamsError(
                "rewrite_module_tmp must contain exactly one '{}' for the layer number, "
                f"got {self.rewrite_module_tmp!r}"
            )
        _positive("lr", self.lr)
        _positive("num_steps", self.num_steps)
        _positive("batch_size", self.batch_size)
        if self.weight_decay < 0:
            raise HParamsError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.norm_constraint is not None:
            _positive("norm_constraint", self.norm_constraint)
            object.__setattr__(self, "norm_constraint", float(self.norm_constraint))
        if self.objective not in OBJECTIVES:
            raise HParamsError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.early_stop_loss < 0:
            raise HParamsError(f"early_stop_loss must be >= 0, got {self.early_stop_loss}")
        if self.num_prefixes < 0 or self.prefix_len < 1:
            raise HParamsError(
                f"num_prefixes must be >= 0 and prefix_len >= 1, got {self.num_prefixes}, "
                f"{self.prefix_len}"
            )
        if self.kl_factor < 0:
            raise HParamsError(f"kl_factor must be >= 0, got {self.kl_factor}")
        if self.keep_subjects < 0:
            raise HParamsError(f"keep_subjects must be >= 0, got {self.keep_subjects}")
        if not 0 <= self.nullspace < float("inf"):
            raise HParamsError(f"nullspace must be a finite number >= 0, got {self.nullspace}")
        if self.keep_rank_layer is not None and self.keep_rank_layer < 0:
            raise HParamsError(
                f"keep_rank_layer must be a block number >= 0 or null, got {self.keep_rank_layer}"
            )
        if self.keep_subject_keys < 0:
            raise HParamsError(f"keep_subject_keys must be >= 0, got {self.keep_subject_keys}")
        if self.keep_subject_parts and not self.keep_nullspace:
            raise HParamsError("keep_subject_parts needs keep_nullspace true (set both or neither)")
        if self.keep_subject_siblings < 0 or (
            self.keep_subject_siblings and not self.keep_nullspace
        ):
            raise HParamsError(
                "keep_subject_siblings must be >= 0 and needs keep_nullspace true, got "
                f"{self.keep_subject_siblings}"
            )
        if self.keep_prior_edits < 0 or (self.keep_prior_edits and not self.keep_nullspace):
            raise HParamsError(
                "keep_prior_edits must be >= 0 and needs keep_nullspace true, got "
                f"{self.keep_prior_edits}"
            )
        if not 0 <= self.keep_prior_share < 1 or (
            self.keep_prior_share and not self.keep_prior_edits
        ):
            raise HParamsError(
                "keep_prior_share must be in [0, 1) and needs keep_prior_edits > 0, got "
                f"{self.keep_prior_share}"
            )
        if self.keep_prior_soft < 0 or (
            self.keep_prior_soft and not (self.keep_prior_share and self.subject_keys_only)
        ):
            raise HParamsError(
                "keep_prior_soft must be >= 0 and needs keep_prior_share > 0 and "
                f"subject_keys_only, got {self.keep_prior_soft}"
            )
        if self.keep_prior_answers and not self.keep_prior_edits:
            raise HParamsError("keep_prior_answers needs keep_prior_edits > 0")
        if self.keep_prior_exact < 0 or (self.keep_prior_exact and not self.keep_prior_edits):
            raise HParamsError(
                "keep_prior_exact must be >= 0 and needs keep_prior_edits > 0, got "
                f"{self.keep_prior_exact}"
            )
        if self.keep_prior_box and (
            self.keep_prior_box < 1 or not self.keep_prior_edits or not self.subject_keys_only
        ):
            raise HParamsError(
                "keep_prior_box must be 0 (off) or >= 1 and needs keep_prior_edits > 0 and "
                f"subject_keys_only, got {self.keep_prior_box}"
            )
        if self.subject_keys_only and not self.keep_nullspace:
            raise HParamsError("subject_keys_only needs keep_nullspace true (set both or neither)")
        if self.box_iters < 0:
            raise HParamsError(f"box_iters must be >= 0, got {self.box_iters}")
        if self.box_iters and (
            self.norm_constraint is None or not (self.keep_nullspace or self.nullspace)
        ):
            raise HParamsError(
                "box_iters alternates the box and a projection: it needs a norm_constraint and "
                "keep_nullspace or nullspace > 0 (or set box_iters 0)"
            )
        if self.subject_contexts < 0 or (self.subject_contexts and not self.subject_keys_only):
            raise HParamsError(
                f"subject_contexts must be >= 0 and needs subject_keys_only, got "
                f"{self.subject_contexts}"
            )
        if self.box_rows and self.norm_constraint is None:
            raise HParamsError("box_rows needs a norm_constraint (the box it keeps)")
        if not isinstance(self.keep_nullspace, bool):
            raise HParamsError(f"keep_nullspace must be true or false, got {self.keep_nullspace!r}")
        if not isinstance(self.store_as, str) or not _STORE_AS.fullmatch(self.store_as):
            raise HParamsError(
                "store_as must be 'dense', 'sign' or 'lowrank:R' (R a positive int), "
                f"got {self.store_as!r}"
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> FTHyperParams:
        if not isinstance(d, dict):
            raise HParamsError(
                f'hyperparameters must be a JSON object like {{"lr": 0.001}}, '
                f"got {type(d).__name__} {_short(d)}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HParamsError(f"unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise HParamsError(f"bad hyperparameters: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> FTHyperParams:
        try:
            d = json.loads(Path(path).read_bytes()[: 1 << 20].decode("utf-8"))
        except FileNotFoundError:
            raise HParamsError(f"hyperparameter file {path} does not exist") from None
        except OSError as e:
            raise HParamsError(f"cannot read hyperparameter file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise HParamsError(f"hyperparameter file {path} is not UTF-8 JSON text") from None
        except json.JSONDecodeError as e:
            raise HParamsError(f"hyperparameter file {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise HParamsError(
                f'hyperparameter file {path} must hold a JSON object like {{"lr": 0.001}}, '
                f"got {type(d).__name__} {_short(d)}"
            )
        return check_finite(cls.from_dict(d))

    def replace(self, **changes) -> FTHyperParams:
        return dataclasses.replace(self, **changes)


def _short(value) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v) -> bool:
    """An int, or a float with an integral value (2.0: rows stored before this check)."""
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Checks by annotation (the dataclass uses string annotations): every field, including ones
# added later, is type-checked before any range check can crash on a wrong type. Finiteness is
# checked where people give values (check_finite), not here: a row stored before it must load.
_TYPE_CHECKS = {
    "int": (_is_int, "a whole number"),
    "float": (_is_number, "a number"),
    "float | None": (lambda v: v is None or _is_number(v), "a number or null"),
    "int | None": (lambda v: v is None or _is_int(v), "a whole number or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "tuple[int, ...]": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(i) for i in v),
        "a list of whole numbers like [4, 5]",
    ),
}


def _check_type(name: str, annotation, value) -> None:
    check = _TYPE_CHECKS.get(annotation if isinstance(annotation, str) else "")
    if check is not None and not check[0](value):
        raise HParamsError(f"{name} must be {check[1]}, got {_short(value)}")


def check_finite(hp: FTHyperParams) -> FTHyperParams:
    """Refuse Infinity / NaN (JSON files may hold them; `show --json` could not print them)."""
    for f in dataclasses.fields(hp):
        value = getattr(hp, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise HParamsError(f"{f.name} must be a finite number, got {value}")
    return hp


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise HParamsError(f"{name} must be > 0, got {value}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> FTHyperParams:
    """Load ``ftedit/core/presets/<name>.json``."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.exists():
        raise HParamsError(f"no preset named {name!r}; available: {', '.join(list_presets())}")
    return FTHyperParams.from_json(path)
