"""A user's own Hugging Face model and data, built offline for tests (not a test file).

Nothing is downloaded: a word-level tokenizer is trained on a small built-in corpus, and tiny
Llama and GPT-2 models are built from configs with seeded weights, then written with
``save_pretrained`` into a folder, as a user's model folder would be. The data files hold
patterns such tiny models learn in a few steps.
"""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from client_sdk.tasks.base import seeded_init

LETTERS = string.ascii_lowercase
#: The classes of :func:`write_seq_cls_csv`: letters in alphabetical order, or reversed.
SEQ_CLS_LABELS = ("up", "down")
MAX_POSITIONS = 128
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
# Every word of the data files below, and some ordinary English: a vocabulary of about 80.
CORPUS = [
    " ".join(LETTERS),
    "count : " + " ".join(string.digits),
    " ".join(SEQ_CLS_LABELS),
    "the quick brown fox jumps over the lazy dog .",
    "hello world , how are you today ?",
    "a model learns to count letters and to tell up from down !",
    "we fine tune small models with low rank adapters on our own data",
]


def make_tokenizer(path: str | Path, *, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (one token per word or punctuation mark), saved in ``path``.

    ``add_bos=True`` prepends ``<s>`` to every text encoded with special tokens, as Llama's
    tokenizer does; ``add_bos=False`` adds nothing, as GPT-2's does. Unknown words are
    ``<unk>``; ``<pad>``, ``<s>`` and ``</s>`` are the pad, BOS and EOS tokens.
    """
    model = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()))
    model.train_from_iterator(CORPUS, trainer)
    if add_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        model.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, model.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, model_max_length=MAX_POSITIONS, **SPECIAL_TOKENS
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def tiny_llama(path: str | Path, *, seed: int = 0) -> Path:
    """A two-layer Llama (hidden 32, grouped-query attention) and its BOS-adding tokenizer."""
    tokenizer = make_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save(config, path, seed)


def tiny_gpt2(path: str | Path, *, seed: int = 0) -> Path:
    """A two-layer GPT-2 (n_embd 32) and its tokenizer, which adds no BOS (as GPT-2's)."""
    tokenizer = make_tokenizer(path, add_bos=False)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(config, path, seed)


def _save(config: LlamaConfig | GPT2Config, path: str | Path, seed: int) -> Path:
    # seeded_init: the same weights for one seed, without touching the caller's torch RNG.
    model: PreTrainedModel = seeded_init(lambda: AutoModelForCausalLM.from_config(config), seed)
    model.save_pretrained(path)
    return Path(path)


def write_causal_lm_jsonl(path: str | Path, *, n: int = 300, seed: int = 0) -> Path:
    """``n`` lines ``{"prompt": "count : c d e", "completion": " f g h"}``: 2 to 4 letters
    and the as many that follow them in the alphabet."""
    rng = np.random.default_rng(seed)
    with Path(path).open("w", encoding="utf-8") as handle:
        for _ in range(n):
            k = int(rng.integers(2, 5))
            start = int(rng.integers(0, len(LETTERS) - 2 * k + 1))
            prompt = "count : " + " ".join(LETTERS[start : start + k])
            completion = " " + " ".join(LETTERS[start + k : start + 2 * k])
            handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return Path(path)


def write_seq_cls_csv(path: str | Path, *, n: int = 200, seed: int = 0) -> Path:
    """A ``text,label`` CSV of ``n`` rows: 3 to 6 consecutive letters, ``up`` in alphabetical
    order, ``down`` reversed (labels by name: :data:`SEQ_CLS_LABELS`)."""
    rng = np.random.default_rng(seed)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(n):
            k = int(rng.integers(3, 7))
            start = int(rng.integers(0, len(LETTERS) - k + 1))
            letters = list(LETTERS[start : start + k])
            label = SEQ_CLS_LABELS[int(rng.integers(0, 2))]
            writer.writerow([" ".join(letters if label == "up" else letters[::-1]), label])
    return Path(path)
