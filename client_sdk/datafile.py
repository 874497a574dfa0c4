"""Reading a user's own data for ``flaas client join --data FILE``.

Two small formats, chosen by the file's extension:

* ``.npz`` (numeric tasks such as ``digits`` and ``mnist``): arrays ``X`` (one row per sample,
  the task's features: 64 values in [0, 1] for digits, 784 for mnist) and ``y`` (integer class
  labels ``0..C-1``); optionally ``X_val`` and ``y_val`` for the local validation split.
* ``.csv`` (header ``text,label``) or ``.jsonl`` (one ``{"text": ..., "label": ...}`` per
  line) for text tasks such as ``trec``: ``label`` is a class name (``ABBR``, ``DESC``,
  ``ENTY``, ``HUM``, ``LOC``, ``NUM`` for trec) or its index. Texts are tokenised on the device.

Without a validation part, ``val_fraction`` of the samples (shuffled with ``seed``) is held out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class LocalData:
    """Training and validation arrays ready for the trainer."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None


def read_texts(path: Path) -> tuple[list[str], list[str]]:
    """``(texts, raw labels)`` from a ``text,label`` CSV or a JSONL file."""
    texts, labels = [], []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: the CSV header must name the columns text and label")
            rows: list[dict[str, Any]] = list(reader)
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise ValueError(f"{path}: record {number} needs 'text' and 'label'")
        texts.append(str(row["text"]))
        labels.append(str(row["label"]).strip())
    if not texts:
        raise ValueError(f"{path}: no records")
    return texts, labels


def label_indices(labels: Sequence[str], names: Sequence[str] | None, classes: int) -> np.ndarray:
    """Class names or decimal indices -> int64 indices in ``[0, classes)``."""
    out = []
    for raw in labels:
        if names is not None and raw in names:
            out.append(list(names).index(raw))
        elif raw.lstrip("-").isdigit() and 0 <= int(raw) < classes:
            out.append(int(raw))
        else:
            known = f"one of {list(names)} or " if names else ""
            raise ValueError(f"label {raw!r} is not {known}an index in [0, {classes})")
    return np.asarray(out, dtype=np.int64)


def load_local_data(
    path: str | Path, task: Any, *, val_fraction: float = 0.2, seed: int = 0
) -> LocalData:
    """Read ``path`` for the built-in ``task`` (a :class:`client_sdk.tasks.Task`)."""
    path = Path(path)
    x_val = y_val = None
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if "X" not in archive or "y" not in archive:
                raise ValueError(f"{path}: an .npz needs arrays named X and y")
            x, y = archive["X"].astype(np.float32), archive["y"].astype(np.int64)
            if "X_val" in archive and "y_val" in archive:
                x_val = archive["X_val"].astype(np.float32)
                y_val = archive["y_val"].astype(np.int64)
    elif path.suffix in TEXT_SUFFIXES:
        from client_sdk.tasks import trec

        if not hasattr(task, "name") or task.name != "trec":
            raise ValueError(f"text files ({', '.join(TEXT_SUFFIXES)}) are for the trec task")
        texts, raw = read_texts(path)
        y = label_indices(raw, trec.LABELS, task.num_classes)
        x = trec.encode_texts(texts)
    else:
        raise ValueError(f"{path}: use .npz (X, y) or {', '.join(TEXT_SUFFIXES)} (text, label)")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{path}: X has {len(x)} rows and y {len(y)} labels")
    if y.min() < 0 or y.max() >= task.num_classes:
        raise ValueError(f"{path}: labels must lie in [0, {task.num_classes})")
    if x_val is None and val_fraction > 0 and len(y) >= 10:
        order = np.random.default_rng(seed).permutation(len(y))
        n_val = max(1, int(round(len(y) * val_fraction)))
        val, train = order[:n_val], order[n_val:]
        x, y, x_val, y_val = x[train], y[train], x[val], y[val]
    return LocalData(x, y, x_val, y_val)
