"""Chat answers go through the tokenizer's chat template (a tiny model with a template set)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ftedit.core import chat
from ftedit.core.metrics import complete
from ftedit.errors import RequestError
from tests.storekit import open_ws

# A template whose markers are words of the tiny vocabulary, so they tokenise to real ids.
TEMPLATE = (
    "{% for m in messages %}the {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}a city is{% endif %}"
)


@pytest.fixture
def chatty(tiny_llama):
    model, tok = tiny_llama
    tok.chat_template = TEMPLATE
    return model, tok


def test_the_question_is_wrapped_in_the_template(chatty):
    model, tok = chatty
    assert chat.chat_prompt(tok, " Paris ") == "the Paris a city is"
    assert chat.chat_prompt(tok, "Paris", prefill=" Rome") == "the Paris a city is Rome"
    # The answer is the plain completion of the templated text, not of the bare question.
    got = chat.chat_generate(model, tok, "Eiffel Tower", 5)
    assert got == complete(model, tok, "the Eiffel Tower a city is", 5).strip()


def test_answer_logprobs_score_the_start_of_the_answer(chatty):
    from ftedit.core.metrics import target_nll

    model, tok = chatty
    lp = chat.answer_logprobs(model, tok, "Eiffel Tower", ["Paris", "Rome"])
    want = target_nll(model, tok, ["the Eiffel Tower a city is"] * 2, ["Paris", "Rome"])
    assert lp == pytest.approx([-s for s, _ in want])
    assert (
        chat.question_for("{} is in", "Eiffel Tower") == "Complete the sentence: Eiffel Tower is in"
    )


def test_no_template_or_no_question_is_a_clear_error(tiny_llama):
    _, tok = tiny_llama
    tok.chat_template = None
    with pytest.raises(RequestError, match="no chat template"):
        chat.chat_prompt(tok, "Where is it?")
    with pytest.raises(RequestError, match="type a question"):
        chat.chat_prompt(tok, "  ")


def test_workspace_and_cli_answer_in_chat_form(tmp_path):
    ws = open_ws(tmp_path / "h")
    ws.tok.chat_template = TEMPLATE
    want = complete(ws.model, ws.tok, "the Eiffel Tower a city is", 4).strip()
    assert ws.generate("Eiffel Tower", 4, chat=True) == want
    assert ws.generate("Eiffel Tower", 4, base=True, chat=True) == want  # no edits yet

    from ftedit.cli import cli

    model_dir = tmp_path / "tiny"
    ws.model.save_pretrained(model_dir)
    ws.tok.save_pretrained(model_dir)  # the template travels with the tokenizer
    res = CliRunner().invoke(
        cli,
        ["--home", str(tmp_path / "c"), "--model", str(model_dir)]
        + ["generate", "--chat", "Eiffel Tower", "--max-new-tokens", "4"],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == want
    assert (
        json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
        or (model_dir / "chat_template.jinja").exists()
    )


def test_chat_texts_trains_the_request_asked_through_the_template(chatty):
    """``chat_texts`` adds each request as a templated question (another wording than the chat
    efficacy's), the target starting the answer; the edit then moves that answer."""
    from ftedit.core.ft import compute_deltas, training_texts
    from ftedit.core.hparams import FTHyperParams
    from ftedit.core.requests import EditRequest
    from ftedit.errors import HParamsError

    model, tok = chatty
    req = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris")
    hp = FTHyperParams(
        layers=(0, 1), num_steps=20, lr=1e-1, norm_constraint=None, early_stop_loss=0.0
    )
    assert training_texts(model, tok, [req], hp) == (["Eiffel Tower is located in"], [" Rome"])
    texts, targets = training_texts(model, tok, [req], hp.replace(chat_texts=True))
    assert texts[1] == "the Finish this sentence: Eiffel Tower is located in a city is"
    assert targets == [" Rome", "Rome"]  # the answer starts a line, not a word
    asked = chat.TRAIN_ASK.format(req.text)
    params = dict(model.named_parameters())

    def answer_after(h: FTHyperParams) -> float:
        deltas = compute_deltas(model, tok, [req], h).deltas
        with torch.no_grad():
            for name in deltas:
                params[name] += deltas[name]
            lp = chat.answer_logprobs(model, tok, asked, ["Rome"])[0]
            for name in deltas:
                params[name] -= deltas[name]
        return lp

    before = chat.answer_logprobs(model, tok, asked, ["Rome"])[0]
    plain, chatted = answer_after(hp), answer_after(hp.replace(chat_texts=True))
    assert chatted > plain + 0.25 and chatted > before + 0.25, (before, plain, chatted)
    tok.chat_template = None
    with pytest.raises(HParamsError, match="chat template"):
        training_texts(model, tok, [req], hp.replace(chat_texts=True))


def test_subject_keys_only_with_chat_texts_spans_the_chat_turns_subject_key(chatty):
    """subject_keys_only localises the edit on the subject's keys in every context it trains
    on; with chat_texts that includes the chat turn, cut after the subject."""
    from ftedit.core.edit_keys import subject_basis
    from ftedit.core.hparams import FTHyperParams
    from ftedit.core.key_reads import each_key
    from ftedit.core.requests import EditRequest

    model, tok = chatty
    req = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris")
    hp = FTHyperParams(layers=(1,), norm_constraint=None, keep_nullspace=True, num_prefixes=0)
    got: list[torch.Tensor] = []
    turn = "the Finish this sentence: Eiffel Tower"  # the template's turn, up to the subject
    each_key(model, tok, hp, [turn], lambda layer, k: got.append(k), None, last=True)
    k = got[0][0].double()

    def off_span(h: FTHyperParams) -> float:
        S = subject_basis(model, tok, h, [req], None)[1].double()
        return float((k - S @ (S.T @ k)).norm() / k.norm())

    assert off_span(hp.replace(chat_texts=True)) < 1e-6
    assert off_span(hp) > 1e-3


def test_cli_edit_chat_texts_flag(tmp_path):
    """`ftedit edit --chat-texts` trains the chat turn too (stored in the edit's hparams); on a
    model without a template it is a one-line error and nothing is stored."""
    from ftedit.cli import cli

    ws = open_ws(tmp_path / "h")
    ws.tok.chat_template = TEMPLATE
    with_template, without = tmp_path / "tiny", tmp_path / "plain"
    for folder in (with_template, without):
        ws.model.save_pretrained(folder)
        ws.tok.save_pretrained(folder)
        ws.tok.chat_template = None
    fact = ["--prompt", "{} is located in", "--subject", "Eiffel Tower", "--target", "Rome"]

    def run(folder, home):
        return CliRunner().invoke(
            cli,
            ["--home", str(tmp_path / home), "--model", str(folder), "edit", *fact]
            + ["--chat-texts", "--json"],
        )

    res = run(with_template, "a")
    assert res.exit_code == 0, res.output
    shown = CliRunner().invoke(cli, ["--home", str(tmp_path / "a"), "show", "1", "--json"])
    assert json.loads(shown.stdout.strip().splitlines()[-1])["hparams"]["chat_texts"] is True
    res = run(without, "b")
    assert res.exit_code != 0 and "chat template" in res.output
    log = CliRunner().invoke(cli, ["--home", str(tmp_path / "b"), "log", "--json"])
    assert json.loads(log.stdout.strip().splitlines()[-1]) == []
