"""Ask an instruct model a question the way it was trained to be asked: through its chat template.

Edits are trained on raw sentences ("The Eiffel Tower is located in the city of"), but a visitor
of an instruct model asks "Where is the Eiffel Tower?". These helpers wrap a question in the
tokenizer's chat template (``add_generation_prompt=True``) so the answer is the assistant's, and
score how likely an answer starts with a given target (the chat efficacy of bench/eval_chat.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ftedit.core.metrics import target_nll
from ftedit.errors import RequestError

# The rewrite asked as an instruction: bench/eval_chat.py's chat efficacy and the Edit tab's
# default question both use it, so the app shows what the benchmark measures.
COMPLETE = "Complete the sentence: {}"
# The instruction the ``chat_texts`` hyperparameter trains behind: deliberately another wording
# than COMPLETE, so the chat efficacy measures an unseen question, not the trained text.
TRAIN_ASK = "Finish this sentence: {}"


def has_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def chat_prompt(tok, question: str, prefill: str = "") -> str:
    """``question`` as one user turn in the tokenizer's chat template, ending where the
    assistant's answer begins (plus ``prefill``, text the answer is made to start with)."""
    if not (question or "").strip():
        raise RequestError("type a question to ask, e.g. 'Where is the Eiffel Tower?'")
    if not has_template(tok):
        raise RequestError(
            "this model's tokenizer has no chat template: use plain completion instead"
        )
    text = tok.apply_chat_template(
        [{"role": "user", "content": question.strip()}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return text + prefill


@torch.no_grad()
def chat_generate(model, tok, question: str, max_new_tokens: int = 24) -> str:
    """The assistant's greedy answer to ``question`` (special tokens dropped)."""
    dev = model.get_input_embeddings().weight.device
    # The template already holds the special tokens (a BOS too, where the model uses one).
    ids = tok(chat_prompt(tok, question), add_special_tokens=False, return_tensors="pt").to(dev)
    out = model.generate(  # stops at the model's end of turn (its eos, e.g. <|im_end|>)
        **ids,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def question_for(prompt: str, subject: str) -> str:
    """The default chat question for an edit: its rewrite sentence as an instruction."""
    return COMPLETE.format(prompt.format(subject).strip())


def answer_logprobs(
    model, tok, question: str, targets: Sequence[str], prefill: str = ""
) -> list[float]:
    """log P(the assistant's answer starts with each target | the templated question), summed
    over the target's tokens (``prefill``: text the answer is made to start with first)."""
    head = chat_prompt(tok, question, prefill)
    # A target right after the template's "assistant\n" starts a line (no leading space);
    # after a prefilled sentence it continues it (one leading space).
    tg = [(" " + t.strip()) if prefill else t.strip() for t in targets]
    return [-s for s, _ in target_nll(model, tok, [head] * len(tg), tg)]
