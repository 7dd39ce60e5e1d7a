"""On the real default model: the default preset's keep penalty is what keeps neighbours."""

from __future__ import annotations

import json

import pytest

from ftedit.core import evaluate as ev
from ftedit.core.ft import compute_deltas
from ftedit.core.hparams import load_preset
from ftedit.core.metrics import counterfact_scores
from ftedit.core.requests import EditRequest
from tests.tiny import assert_params_equal, params_snapshot

DEV_RECORD = 0  # a dev-split record (0-249), never a test one: Angola -> Antarctica


@pytest.mark.real_model
def test_default_preset_edits_without_moving_neighbours(real_model, data_dir):
    record = json.loads((data_dir / "counterfact-sample.json").read_text())[DEV_RECORD]
    model, tok = real_model.model, real_model.tok
    req = EditRequest.from_counterfact(record)
    snap = params_snapshot(model)
    before = counterfact_scores(model, tok, record)
    scores = {}
    for preset in ("fast", "default"):
        res = compute_deltas(model, tok, [req], load_preset(preset))
        assert_params_equal(model, snap)
        with ev.applied(model, res.deltas):
            scores[preset] = counterfact_scores(model, tok, record)
    assert before["efficacy"] == 0 and scores["default"]["efficacy"] == 1
    assert scores["default"]["paraphrase"] >= 0.5
    # The fast preset (no keep penalty) drags one of the ten neighbours along to Antarctica;
    # the default keeps all of them where the unedited model had them.
    assert scores["fast"]["neighborhood"] < before["neighborhood"]
    assert scores["default"]["neighborhood"] == before["neighborhood"]
