"""Tiny models and a word-level tokenizer built locally (no hub), as in transformers' testers."""

from __future__ import annotations

import torch

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "in",
    "is",
    "was",
    "located",
    "capital",
    "city",
    "country",
    "language",
    "speaks",
    "native",
    "born",
    "plays",
    "sport",
    "team",
    "football",
    "basketball",
    "music",
    "jazz",
    "rock",
    "works",
    "for",
    "company",
    "made",
    "by",
    "Eiffel",
    "Tower",
    "Paris",
    "Rome",
    "London",
    "Berlin",
    "Tokyo",
    "France",
    "Italy",
    "England",
    "Germany",
    "Japan",
    "Danielle",
    "Darrieux",
    "French",
    "English",
    "Italian",
    "Toko",
    "Yasuda",
    "guitar",
    "piano",
    "Apple",
    "Google",
    "Microsoft",
    "Nokia",
    "Angola",
    "Africa",
    "Antarctica",
    "Europe",
    "Asia",
    "mother",
    "tongue",
    "official",
    "which",
    "where",
    "what",
    "who",
    ".",
    ",",
    "?",
    "!",
]


def make_tokenizer(padding_side: str = "right"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        padding_side=padding_side,
    )
    return tok


VOCAB_SIZE = 99


def make_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model, make_tokenizer()


def make_gpt2(seed: int = 0, layers: int = 2, width: int = 32, positions: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=width,
        n_layer=layers,
        n_head=4,
        n_positions=positions,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    model = GPT2LMHeadModel(cfg).eval()
    return model, make_tokenizer()


def params_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_params_equal(model, snapshot) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), snapshot[n]), f"{n} changed"
