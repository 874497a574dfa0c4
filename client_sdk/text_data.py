"""A client's local data as the generic trainer takes it: tokenised text, or a task's arrays.

:class:`TextDataset` tokenises a user's records (read, torch-free, by
:func:`client_sdk.datafile.read_records`) for a Hugging Face model: a causal LM learns the
completions (prompt tokens masked out of the loss), a classifier the class of each text.
:class:`ArrayDataset` holds the built-in numeric tasks' arrays. Both batch alike
(:class:`LocalDataset`), so one training loop serves every kind of data.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from client_sdk.datafile import holdout, label_ids, read_records

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: The label a loss skips: the default ``ignore_index`` of torch's and transformers' losses.
IGNORE_INDEX = -100
#: Samples as an array, a tensor or a sequence (first axis = samples).
ArrayLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[Any]


class LocalDataset(Protocol):
    """What the trainer needs of a client's data, whatever its kind."""

    def __len__(self) -> int:
        """The number of samples."""

    @property
    def labels(self) -> np.ndarray | None:
        """Class index per sample (AutoRank's label criteria); None when samples have none."""

    def batches(self, batch_size: int, *, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the samples as model inputs, shuffled by ``seed`` (None: in order)."""

    def split(self, val_fraction: float, seed: int) -> tuple[LocalDataset, LocalDataset | None]:
        """``(train, validation)``, deterministic for ``seed``; no validation when too small."""


class _Samples(ABC):
    """Shuffled batching and holdout over indexed samples; subclasses take and collate them."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _subset(self, index: np.ndarray) -> Self: ...

    @abstractmethod
    def _collate(self, index: list[int]) -> dict[str, torch.Tensor]: ...

    def batches(self, batch_size: int, *, seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass in batches of ``batch_size`` (the last may be smaller), on the CPU.

        Shuffled with ``torch.Generator().manual_seed(seed)``: the same order on every machine
        and device for one seed (as :func:`client_sdk.training_loop.fit` shuffles).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        n = len(self)
        if seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for start in range(0, n, batch_size):
            yield self._collate(order[start : start + batch_size].tolist())

    def split(self, val_fraction: float, seed: int) -> tuple[Self, Self | None]:
        """``(train, validation)`` by :func:`client_sdk.datafile.holdout`; ``(self, None)``
        when ``val_fraction`` is 0 or there are too few samples to spare any."""
        parts = holdout(len(self), val_fraction, seed)
        if parts is None:
            return self, None
        train, val = parts
        return self._subset(train), self._subset(val)


class TextDataset(_Samples):
    """Token ids per sample, with per-token labels (CAUSAL_LM) or one class each (SEQ_CLS).

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` (int64), padded on the right
    to the batch's longest sample: what a Hugging Face model's ``forward`` takes, the causal
    LM's labels being ``-100`` wherever the loss must not look (prompt, padding).
    """

    def __init__(
        self, input_ids: list[list[int]], targets: list[list[int]] | np.ndarray, pad_id: int
    ) -> None:
        """``targets``: a label list per sample (CAUSAL_LM) or an int64 class array (SEQ_CLS)."""
        if len(targets) != len(input_ids):
            raise ValueError(f"{len(input_ids)} samples but {len(targets)} label entries")
        self._ids = input_ids
        self._targets = targets
        self._pad_id = pad_id

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        task_type: str,
        *,
        max_seq_len: int,
        label_names: Sequence[str] | None = None,
        num_labels: int | None = None,
    ) -> TextDataset:
        """Tokenise records as :func:`~client_sdk.datafile.read_records` returns them.

        CAUSAL_LM: prompt (with the tokenizer's special tokens, e.g. a BOS) + completion
        (without: they would land mid-sequence) + EOS unless already last, cut to
        ``max_seq_len`` from the right; only completion and EOS tokens are labels (all of a
        ``text`` record). Records left with nothing to learn are dropped with a warning.
        SEQ_CLS: the text with special tokens, cut to ``max_seq_len``, and its class index
        (``num_labels`` defaults to the number of ``label_names``).
        """
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be at least 1, not {max_seq_len}")
        pad_id = next(
            (i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0
        )
        if task_type == "SEQ_CLS":
            if num_labels is None and not label_names:
                raise ValueError("SEQ_CLS data needs num_labels or label_names")
            classes = label_ids(
                [record["label"] for record in records],
                label_names,
                num_labels if num_labels is not None else len(label_names or ()),
            )
            ids = _encode(
                tokenizer, [r["text"] for r in records], special=True, max_len=max_seq_len
            )
            return cls(ids, classes, pad_id)
        if task_type != "CAUSAL_LM":
            raise ValueError(f"unknown task type {task_type!r}; one of CAUSAL_LM, SEQ_CLS")
        return cls._causal(records, tokenizer, max_seq_len, pad_id)

    @classmethod
    def _causal(
        cls,
        records: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        max_seq_len: int,
        pad_id: int,
    ) -> TextDataset:
        eos = tokenizer.eos_token_id
        heads = [r["prompt"] if "prompt" in r else r["text"] for r in records]
        completions = [r["completion"] for r in records if "prompt" in r]
        head_ids = _encode(tokenizer, heads, special=True, max_len=max_seq_len)
        tails = iter(_encode(tokenizer, completions, special=False, max_len=max_seq_len))
        ids, labels = [], []
        for record, head in zip(records, head_ids, strict=True):
            prompted = "prompt" in record
            sequence = head + next(tails) if prompted else list(head)
            if eos is not None and (not sequence or sequence[-1] != eos):
                sequence.append(eos)
            masked = len(head) if prompted else 0
            targets = [IGNORE_INDEX] * masked + sequence[masked:]
            # Token 0 is never predicted (a causal LM scores token t from the tokens before t),
            # so a record needs a label after it to teach anything.
            if all(label == IGNORE_INDEX for label in targets[1:max_seq_len]):
                continue
            ids.append(sequence[:max_seq_len])
            labels.append(targets[:max_seq_len])
        if not ids:
            raise ValueError(f"no record has a completion token within max_seq_len={max_seq_len}")
        if len(ids) < len(records):
            warnings.warn(
                f"{len(records) - len(ids)} of {len(records)} records dropped: none of their "
                f"completion fits in max_seq_len={max_seq_len} tokens",
                stacklevel=3,
            )
        return cls(ids, labels, pad_id)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        task_type: str,
        *,
        max_seq_len: int,
        label_names: Sequence[str] | None = None,
        num_labels: int | None = None,
    ) -> TextDataset:
        """:meth:`from_records` of :func:`~client_sdk.datafile.read_records`; errors name
        ``path``."""
        records = read_records(path, task_type)
        try:
            return cls.from_records(
                records,
                tokenizer,
                task_type,
                max_seq_len=max_seq_len,
                label_names=label_names,
                num_labels=num_labels,
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def labels(self) -> np.ndarray | None:
        """Class indices (SEQ_CLS); None for a causal LM, whose samples have no class."""
        return self._targets if isinstance(self._targets, np.ndarray) else None

    @property
    def n_tokens(self) -> int:
        """Tokens trained on per pass: the predicted label tokens of a causal LM (token 0 of a
        sample is never predicted), every input token of a classifier."""
        if isinstance(self._targets, np.ndarray):
            return sum(map(len, self._ids))
        return sum(sum(t != IGNORE_INDEX for t in row[1:]) for row in self._targets)

    def _subset(self, index: np.ndarray) -> TextDataset:
        targets = self._targets
        picked = targets[index] if isinstance(targets, np.ndarray) else [targets[i] for i in index]
        return TextDataset([self._ids[i] for i in index], picked, self._pad_id)

    def _collate(self, index: list[int]) -> dict[str, torch.Tensor]:
        rows = [self._ids[i] for i in index]
        if isinstance(self._targets, np.ndarray):
            labels = torch.as_tensor(self._targets[index], dtype=torch.int64)
        else:
            labels = _pad([self._targets[i] for i in index], IGNORE_INDEX)
        return {
            "input_ids": _pad(rows, self._pad_id),
            "attention_mask": _pad([[1] * len(row) for row in rows], 0),
            "labels": labels,
        }


class ArrayDataset(_Samples):
    """A built-in task's arrays: batches ``{"inputs": X rows, "labels": int64 classes}``.

    Checked and converted by :func:`as_tensors`: float features become
    float32; integer inputs (token ids, as the trec task stacks them) stay integers.
    """

    def __init__(self, x: ArrayLike, y: ArrayLike) -> None:
        self._x, self._y = as_tensors((x, y))

    def __len__(self) -> int:
        return len(self._y)

    @property
    def labels(self) -> np.ndarray:
        return self._y.numpy()

    def _subset(self, index: np.ndarray) -> ArrayDataset:
        rows = torch.as_tensor(index, dtype=torch.int64)
        return ArrayDataset(self._x[rows], self._y[rows])

    def _collate(self, index: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(index, dtype=torch.int64)
        return {"inputs": self._x[rows], "labels": self._y[rows]}


def as_tensors(data: tuple[ArrayLike, ArrayLike]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` as CPU tensors: float X -> float32, integer X kept, y -> int64 labels.

    Integer inputs are kept as integers because they are ids (tokens), not features.
    """
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError("data must be a pair (X, y)")
    x_raw, y_raw = data
    x = x_raw if isinstance(x_raw, torch.Tensor) else torch.as_tensor(np.asarray(x_raw))
    y = y_raw if isinstance(y_raw, torch.Tensor) else torch.as_tensor(np.asarray(y_raw))
    if x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool):
        raise TypeError(f"unsupported input dtype {x.dtype}")
    if y.is_floating_point() or y.dim() != 1:
        raise TypeError(f"y must be 1-D integer class labels, got {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"X has {len(x)} samples but y has {len(y)}")
    if len(y) == 0:
        raise ValueError("data is empty")
    return x.cpu(), y.to(device="cpu", dtype=torch.int64)


def _encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, special: bool, max_len: int
) -> list[list[int]]:
    """Token ids of ``texts``, at most ``max_len`` each: one batched call, which a fast
    tokenizer encodes in parallel; truncating there keeps its too-long warning quiet."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=special, truncation=True, max_length=max_len)
    return [list(row) for row in encoded["input_ids"]]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Rows padded on the right with ``value`` to the longest: an int64 ``(N, L)`` tensor."""
    tensors = [torch.tensor(row, dtype=torch.int64) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=value)
