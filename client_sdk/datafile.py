"""Reading a user's own data for ``flaas client join --data FILE``: numeric arrays and text.

numpy and the standard library only: the CLI checks a file with these in well under a second,
before torch or transformers are imported. The formats, chosen by the file's extension:

* ``.npz`` (numeric tasks such as ``digits`` and ``mnist``): arrays ``X`` (one row per sample,
  the task's features: 64 values in [0, 1] for digits, 784 for mnist) and ``y`` (integer class
  labels ``0..C-1``); optionally ``X_val`` and ``y_val`` for the local validation split.
* classification text (the ``trec`` task, ``SEQ_CLS`` models): ``.csv`` (header ``text,label``)
  or ``.jsonl`` (one ``{"text": ..., "label": ...}`` per line): ``label`` is a class name
  (``ABBR``, ``DESC``, ``ENTY``, ``HUM``, ``LOC``, ``NUM`` for trec) or its index.
* causal-LM text (``CAUSAL_LM`` models): ``.jsonl``, one ``{"prompt": ..., "completion": ...}``
  (the loss covers the completion only) or ``{"text": ...}`` (the loss covers all of it) per
  line; both forms may be mixed in one file. A prompt may be empty, a completion or text not.

Texts are tokenised on the device (:mod:`client_sdk.text_data`). Without a validation part,
``val_fraction`` of the samples (shuffled with ``seed``) is held out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: What a text file of each task type holds, said in every error about one.
TEXT_FORMATS: dict[str, str] = {
    "CAUSAL_LM": 'JSON lines (.jsonl), each {"prompt": "...", "completion": "..."} '
    'or {"text": "..."}',
    "SEQ_CLS": "a CSV (.csv) with the header text,label, or JSON lines (.jsonl), each "
    '{"text": "...", "label": ...}, a label being a class name or index',
}
SUFFIXES: dict[str, tuple[str, ...]] = {"CAUSAL_LM": (".jsonl",), "SEQ_CLS": (".csv", ".jsonl")}
#: Fewer samples than this keep no validation holdout: a handful of them would be all noise.
MIN_HOLDOUT_SAMPLES = 10


@dataclass(frozen=True)
class LocalData:
    """Training and validation arrays ready for the trainer."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None


def read_records(path: str | Path, task_type: str) -> list[dict[str, Any]]:
    """The records of a text file for ``task_type``, checked, in file order.

    ``SEQ_CLS`` records are ``{"text": str, "label": str}`` (the label as written, a name or a
    decimal index: :func:`label_ids` maps it); ``CAUSAL_LM`` ones are ``{"prompt": str,
    "completion": str}`` or ``{"text": str}``, other keys dropped. Raises ValueError naming
    ``path:line``, what is wrong and what the file may hold.
    """
    path = Path(path)
    if task_type not in TEXT_FORMATS:
        raise ValueError(f"unknown task type {task_type!r}; one of {', '.join(TEXT_FORMATS)}")
    expected = TEXT_FORMATS[task_type]
    if path.suffix not in SUFFIXES[task_type]:
        raise ValueError(f"{path}: a {task_type} data file is {expected}, not {path.suffix!r}")
    check = _causal_record if task_type == "CAUSAL_LM" else _labelled_record
    try:
        records = [check(row, f"{path}:{line}", expected) for line, row in _rows(path, expected)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if not records:
        raise ValueError(f"{path}: empty file: no records; expected {expected}")
    return records


def _rows(path: Path, expected: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed row)`` of a CSV (rows as dicts) or JSON-lines file."""
    # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if path.suffix == ".csv":
            reader = csv.DictReader(handle)
            try:
                if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                    raise ValueError(
                        f"{path}:1: the CSV header must name the columns text and label, "
                        f"not {reader.fieldnames}"
                    )
                # line_num is the row's last physical line: a quoted text may span several.
                yield from ((reader.line_num, row) for row in reader)
            except csv.Error as exc:
                raise ValueError(f"{path}:{reader.line_num}: not CSV ({exc})") from None
            return
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(
                    f"{path}:{number}: not JSON ({exc}); expected {expected}"
                ) from None
            yield number, row


def _causal_record(row: Any, where: str, expected: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: {type(row).__name__} is not a JSON object; expected {expected}")
    keys = {"prompt", "completion", "text"} & row.keys()
    if keys == {"prompt", "completion"}:
        return {
            "prompt": _string(row, "prompt", where, may_be_empty=True),
            "completion": _string(row, "completion", where),
        }
    if keys == {"text"}:
        return {"text": _string(row, "text", where)}
    raise ValueError(
        f"{where}: a record needs the keys prompt and completion, or text (not both); "
        f"this one has {sorted(row)}"
    )


def _labelled_record(row: Any, where: str, expected: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: {type(row).__name__} is not a JSON object; expected {expected}")
    # A CSV row short of fields holds None in the missing ones, as JSON null does.
    missing = [key for key in ("text", "label") if row.get(key) is None]
    if missing:
        raise ValueError(f"{where}: missing {' and '.join(missing)}; expected {expected}")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"{where}: label {label!r} is neither a class name nor an integer index")
    if not str(label).strip():
        raise ValueError(f"{where}: empty label; expected a class name or index")
    return {"text": _string(row, "text", where), "label": str(label).strip()}


def _string(row: dict[str, Any], key: str, where: str, *, may_be_empty: bool = False) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, not {type(value).__name__}")
    if not may_be_empty and not value.strip():
        raise ValueError(f"{where}: empty {key}")
    return value


def label_ids(
    raw_labels: Sequence[str | int], names: Sequence[str] | None, num_labels: int
) -> np.ndarray:
    """Class names or decimal indices -> int64 indices in ``[0, num_labels)``.

    A name wins over an index that reads the same (names such as ``"0"``, ``"1"``).
    """
    if names is not None and len(names) > num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} classes")
    index = {name: i for i, name in enumerate(names or ())}
    out = []
    for number, raw in enumerate(raw_labels, 1):
        text = str(raw).strip()
        if text in index:
            out.append(index[text])
        elif text.isdecimal() and int(text) < num_labels:
            out.append(int(text))
        else:
            known = f"one of {list(names)} or " if names else ""
            raise ValueError(
                f"record {number}: label {raw!r} is not {known}an index in [0, {num_labels})"
            )
    return np.asarray(out, dtype=np.int64)


def holdout(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(train, validation)`` indices of ``n`` samples, shuffled with ``seed``.

    ``round(n * val_fraction)`` (at least one) samples are held out; None when ``val_fraction``
    is 0 or there are fewer than :data:`MIN_HOLDOUT_SAMPLES` samples.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), not {val_fraction}")
    if val_fraction == 0 or n < MIN_HOLDOUT_SAMPLES:
        return None
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return order[n_val:], order[:n_val]


def read_arrays(path: str | Path, num_labels: int) -> LocalData:
    """Read an ``.npz`` of a built-in model: ``X`` and ``y`` (and ``X_val``/``y_val``).

    The validation arrays stay None when the file has none (a holdout is cut later).
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: the built-in models read .npz files with arrays X and y")
    x_val = y_val = None
    with np.load(path) as archive:
        if "X" not in archive or "y" not in archive:
            raise ValueError(f"{path}: an .npz needs arrays named X and y")
        x, y = archive["X"].astype(np.float32), archive["y"].astype(np.int64)
        if "X_val" in archive and "y_val" in archive:
            x_val = archive["X_val"].astype(np.float32)
            y_val = archive["y_val"].astype(np.int64)
    for name, features, labels in (("X", x, y), ("X_val", x_val, y_val)):
        if features is None or labels is None:
            continue
        if len(features) != len(labels) or len(labels) == 0:
            raise ValueError(f"{path}: {name} has {len(features)} rows and {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= num_labels:
            raise ValueError(f"{path}: labels must lie in [0, {num_labels})")
        if not np.isfinite(features).all():
            raise ValueError(
                f"{path}: {name} holds NaN or infinite values; the built-in models take "
                "finite features in [0, 1]"
            )
        low, high = float(features.min()), float(features.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"{path}: {name} holds values in [{low:g}, {high:g}]; the built-in models "
                "take features in [0, 1] (divide pixels by their maximum, e.g. 255 or 16)"
            )
    return LocalData(x, y, x_val, y_val)
