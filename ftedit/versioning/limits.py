"""Limits for a public deployment: request size, steps, time per edit, edits per session, uploads.

All off by default (a person on their own machine is not limited); a shared deployment turns
them on with environment variables (README: "Limits on a public deployment"):

    FTEDIT_MAX_PROMPT_TOKENS   tokens in the prompt with its subject filled in
    FTEDIT_MAX_TARGET_TOKENS   tokens in target_new (and target_true)
    FTEDIT_MAX_STEPS           num_steps an edit may ask for
    FTEDIT_EDIT_TIMEOUT        seconds of training per edit; stopped cleanly past it
    FTEDIT_RATE_LIMIT          edits per visitor session, "N/SECONDS" (e.g. "5/60")
    FTEDIT_MAX_UPLOAD          size of an uploaded edit file, e.g. "64mb" (also Gradio's limit)

Every refusal is a :class:`~ftedit.errors.LimitError` that names the limit and its variable,
raised before anything changes (the time limit stops training through the step callback;
``compute_deltas`` restores the weights, so nothing changes then either).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ftedit.core.hparams import FTHyperParams
from ftedit.core.requests import EditRequest
from ftedit.errors import Cancelled, HParamsError, LimitError

Callback = Callable[[int, int, float], None]
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_size(text: str) -> int:
    """'512mb' -> 512_000_000 (Gradio's spelling of max_file_size); a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise HParamsError(f"a size is a number with kb/mb/gb, like '64mb', got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _env_number(name: str, kind: type):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise HParamsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise HParamsError(f"{name} must be positive, got {raw!r} (unset it for no limit)")
    return value


@dataclass(frozen=True)
class Limits:
    """Deployment limits; ``None`` means no limit."""

    max_prompt_tokens: int | None = None
    max_target_tokens: int | None = None
    max_steps: int | None = None
    edit_seconds: float | None = None
    rate: tuple[int, float] | None = None  # (edits, per seconds) per visitor session
    max_upload_bytes: int | None = None

    @classmethod
    def from_env(cls) -> Limits:
        """Read the ``FTEDIT_*`` variables listed in the module docstring."""
        rate = None
        if raw := os.environ.get("FTEDIT_RATE_LIMIT", "").strip():
            m = re.fullmatch(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)", raw)
            if not m or int(m.group(1)) < 1:
                raise HParamsError(
                    f"FTEDIT_RATE_LIMIT is 'EDITS/SECONDS', like '5/60', got {raw!r}"
                )
            rate = (int(m.group(1)), float(m.group(2)))
        upload = os.environ.get("FTEDIT_MAX_UPLOAD", "").strip()
        return cls(
            max_prompt_tokens=_env_number("FTEDIT_MAX_PROMPT_TOKENS", int),
            max_target_tokens=_env_number("FTEDIT_MAX_TARGET_TOKENS", int),
            max_steps=_env_number("FTEDIT_MAX_STEPS", int),
            edit_seconds=_env_number("FTEDIT_EDIT_TIMEOUT", float),
            rate=rate,
            max_upload_bytes=parse_size(upload) if upload else None,
        )

    def check_edit(self, requests: Sequence[EditRequest], tok, hp: FTHyperParams) -> None:
        """Refuse requests or hyperparameters over the limits, before any training.

        Also the core's own length check (prompt + target within ``requests.MAX_TOKENS``): the
        Workspace calls this before its "before" report, so an over-long target is refused at
        once instead of after scoring it.
        """
        if self.max_steps is not None and hp.num_steps > self.max_steps:
            raise LimitError(
                f"this deployment allows at most {self.max_steps} steps per edit "
                f"(FTEDIT_MAX_STEPS), got {hp.num_steps}: lower Max steps"
            )
        self.check_requests(requests, tok)

    def check_requests(self, requests: Sequence[EditRequest], tok) -> None:
        """Lengths only (typed edits and imported files alike): the core's prompt + target
        limit, then the deployment's token limits."""
        for r in requests:
            r.check_length(tok)
        for r in requests:
            _check_tokens(
                tok,
                r.text,
                self.max_prompt_tokens,
                "prompt (with its subject)",
                "FTEDIT_MAX_PROMPT_TOKENS",
            )
            for target in (r.target_new, r.target_true):
                if target:
                    _check_tokens(
                        tok,
                        target,
                        self.max_target_tokens,
                        f"target {target.strip()!r}",
                        "FTEDIT_MAX_TARGET_TOKENS",
                    )

    def timed(self, callback: Callback | None) -> Callback | None:
        """``callback`` plus the per-edit time limit: past it, the next step's callback raises
        (training stops between steps; compute_deltas restores the weights)."""
        if self.edit_seconds is None:
            return callback
        limit, start = self.edit_seconds, time.monotonic()

        def guarded(step: int, num_steps: int, loss: float) -> None:
            if callback is not None:
                callback(step, num_steps, loss)
            if time.monotonic() - start > limit and step < num_steps:
                raise LimitError(
                    f"the edit ran past this deployment's {limit:g} s limit "
                    f"(FTEDIT_EDIT_TIMEOUT) at step {step}/{num_steps} and was "
                    "stopped; nothing was changed: try fewer steps"
                )

        return guarded

    def check_upload(self, path: str | Path) -> None:
        size = Path(path).stat().st_size
        if self.max_upload_bytes is not None and size > self.max_upload_bytes:
            raise LimitError(
                f"the file is {size:,} bytes; this deployment accepts edit files up "
                f"to {self.max_upload_bytes:,} bytes (FTEDIT_MAX_UPLOAD)"
            )


def _check_tokens(tok, text: str, limit: int | None, what: str, var: str) -> None:
    if limit is None:
        return
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    if n > limit:
        raise LimitError(
            f"the {what} is {n} tokens; this deployment allows {limit} ({var}): shorten it"
        )


class RateLimiter:
    """At most ``n`` events per ``seconds`` for each key (a visitor session): a sliding window."""

    def __init__(self, rate: tuple[int, float] | None):
        self.rate = rate
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Count one event for ``key``, or refuse it (counted only when allowed)."""
        if self.rate is None:
            return
        n, seconds = self.rate
        now = time.monotonic()
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and now - times[0] >= seconds:
                times.popleft()
            if len(times) >= n:
                wait = seconds - (now - times[0])
                raise LimitError(
                    f"rate limit: at most {n} edits per {seconds:g} s per visitor "
                    f"(FTEDIT_RATE_LIMIT); try again in {wait:.0f} s"
                )
            times.append(now)


# ---- the default step ceiling and cancellation (Workspace.edit applies both) -------------
# num_steps ceiling when FTEDIT_MAX_STEPS is unset: the presets use 25, and one request of a
# million steps would hold the workspace lock for every visitor until a restart.
DEFAULT_MAX_STEPS = 200


def check_steps(hp: FTHyperParams, configured: int | None) -> None:
    """The default num_steps ceiling (FTEDIT_MAX_STEPS, when set, is checked by Limits)."""
    if configured is None and hp.num_steps > DEFAULT_MAX_STEPS:
        raise LimitError(
            f"num_steps {hp.num_steps} is above the default ceiling of {DEFAULT_MAX_STEPS} "
            "(the presets use 25): lower num_steps, or set FTEDIT_MAX_STEPS to allow more"
        )


def cancellable(callback, cancel: threading.Event | None):
    """``callback``, then a check of ``cancel`` after every training step (raising stops
    training: compute_deltas restores the weights in its finally)."""
    if cancel is None:
        return callback

    def checked(step: int, num_steps: int, loss: float) -> None:
        if callback is not None:
            callback(step, num_steps, loss)
        if cancel.is_set():
            raise Cancelled(
                f"the edit was cancelled at step {step}/{num_steps}; nothing was changed"
            )

    return checked
