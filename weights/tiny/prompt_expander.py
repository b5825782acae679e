"""A tiny local prompt expander: a Qwen2 causal LM with a chat template, as the Qwen repos ship it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from .wan import WORDS

# ChatML turns as Qwen2.5's own template renders them for a conversation with a system message and no tools.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE (every byte has a token, so any text encodes) with merges trained on ``WORDS``."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(WORDS)], trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_prompt_expander(folder: Path) -> None:
    """A one-layer, 16-wide Qwen2 causal LM and its chat tokenizer in one folder, as the Qwen repos ship them.

    Left fully random, greedy decoding writes stray bytes or whitespace, or stops at once, which would read as an
    expander failure. So every input embedding carries one large constant feature and the (untied) output head
    gives it weight +1 on the whole-word tokens and -1 on all others: the random model always writes words, until
    ``max_new_tokens``.
    """
    tokenizer = build_chat_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    words = [i for token, i in tokenizer.get_vocab().items() if token.startswith("Ġ") and token[1:].isalpha()]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 5.0
        model.lm_head.weight[:, 0] = -1.0
        model.lm_head.weight[words, 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
