"""Deployment limits: each refusal is a clear LimitError and changes nothing."""

from __future__ import annotations

import pytest

from ftedit.core.requests import EditRequest
from ftedit.errors import HParamsError, LimitError
from ftedit.versioning.limits import Limits, RateLimiter, parse_size
from tests.storekit import HP0, REQUESTS, assert_same, open_ws, params


def test_limits_come_from_the_environment(monkeypatch):
    assert Limits.from_env() == Limits()  # nothing set: no limits
    for name, value in [
        ("FTEDIT_MAX_PROMPT_TOKENS", "12"),
        ("FTEDIT_MAX_TARGET_TOKENS", "3"),
        ("FTEDIT_MAX_STEPS", "40"),
        ("FTEDIT_EDIT_TIMEOUT", "2.5"),
        ("FTEDIT_RATE_LIMIT", "5/60"),
        ("FTEDIT_MAX_UPLOAD", "64mb"),
    ]:
        monkeypatch.setenv(name, value)
    assert Limits.from_env() == Limits(12, 3, 40, 2.5, (5, 60.0), 64_000_000)
    monkeypatch.setenv("FTEDIT_RATE_LIMIT", "five")
    with pytest.raises(HParamsError, match="EDITS/SECONDS"):
        Limits.from_env()
    monkeypatch.setenv("FTEDIT_RATE_LIMIT", "5/60")
    monkeypatch.setenv("FTEDIT_MAX_STEPS", "-1")
    with pytest.raises(HParamsError, match="FTEDIT_MAX_STEPS must be positive"):
        Limits.from_env()
    assert parse_size("512mb") == 512_000_000 and parse_size("2 KiB") == 2048


def _refused(ws, match, request=REQUESTS[0], hp=HP0):
    before = params(ws)
    with pytest.raises(LimitError, match=match):
        ws.edit(request, hp)
    assert_same(params(ws), before)
    assert ws.history() == [] and ws.store.blobs.list() == []


def test_edit_limits_refuse_before_anything_changes():
    ws = open_ws()
    ws.limits = Limits(max_prompt_tokens=4, max_target_tokens=1, max_steps=3)
    _refused(
        ws,
        r"prompt \(with its subject\) is 5 tokens; .* allows 4 "
        r"\(FTEDIT_MAX_PROMPT_TOKENS\)",
    )
    long_target = EditRequest("{} is in", "France", "the city of Rome")
    _refused(ws, r"target 'the city of Rome' is \d tokens.*FTEDIT_MAX_TARGET_TOKENS", long_target)
    _refused(
        ws,
        r"at most 3 steps per edit \(FTEDIT_MAX_STEPS\), got 9",
        EditRequest("{} is in", "France", "Rome"),
        HP0.replace(num_steps=9),
    )
    ws.edit(EditRequest("{} is in", "France", "Rome"), HP0)  # within the limits: accepted


def test_the_time_limit_stops_training_cleanly():
    ws = open_ws()
    ws.limits = Limits(edit_seconds=1e-9)
    steps = []
    before = params(ws)
    with pytest.raises(LimitError, match=r"past this deployment's 1e-09 s limit .* step 1/5"):
        ws.edit(
            REQUESTS[0],
            HP0.replace(num_steps=5, early_stop_loss=0.0),
            callback=lambda step, n, loss: steps.append(step),
        )
    assert steps == [1]  # stopped after the first step
    assert_same(params(ws), before)
    assert ws.history() == [] and ws.store.blobs.list() == [] and ws.verify().ok


def test_rate_limit_per_visitor(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ftedit.versioning.limits.time.monotonic", lambda: clock[0])
    rate = RateLimiter((2, 60))
    rate.check("alice")
    rate.check("alice")
    with pytest.raises(LimitError, match=r"at most 2 edits per 60 s .* try again in 60 s"):
        rate.check("alice")
    rate.check("bob")  # another visitor has a budget of their own
    clock[0] += 60
    rate.check("alice")  # the window slid past the first two
    RateLimiter(None).check("anyone")


def test_upload_size(tmp_path):
    f = tmp_path / "e.safetensors"
    f.write_bytes(b"x" * 2000)
    Limits(max_upload_bytes=2000).check_upload(f)
    with pytest.raises(LimitError, match=r"2,000 bytes.*up to 1,000 bytes \(FTEDIT_MAX_UPLOAD\)"):
        Limits(max_upload_bytes=1000).check_upload(f)
