"""A device's own data for the job's model: read and checked first, tokenised later.

:func:`read_training_data` needs neither torch nor transformers, so ``flaas client join``
reports a bad file in well under two seconds; :meth:`DeviceData.datasets` then builds the
trainer's datasets (tokenised with the model's own tokenizer, or arrays for a built-in model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client_sdk.datafile import LocalData, holdout, read_arrays, read_records
from client_sdk.model_spec import ModelLocation, ModelSpec

if TYPE_CHECKING:
    from client_sdk.text_data import LocalDataset


@dataclass(frozen=True)
class DeviceData:
    """Training (and optional validation) data of one device, as read from its files."""

    spec: ModelSpec
    arrays: LocalData | None = None
    records: list[dict[str, Any]] | None = None
    val_records: list[dict[str, Any]] | None = None

    def datasets(
        self,
        location: ModelLocation | None,
        *,
        max_seq_len: int = 512,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> tuple[LocalDataset, LocalDataset | None]:
        """(training, validation) datasets; without validation data ``val_fraction`` of the
        training samples is held out (none when there are fewer than ten)."""
        from client_sdk.text_data import ArrayDataset, TextDataset

        if self.arrays is not None:
            a = self.arrays
            if a.x_val is not None and a.y_val is not None:
                return ArrayDataset(a.x_train, a.y_train), ArrayDataset(a.x_val, a.y_val)
            parts = holdout(len(a.y_train), val_fraction, seed)
            if parts is None:
                return ArrayDataset(a.x_train, a.y_train), None
            train, val = parts
            return (
                ArrayDataset(a.x_train[train], a.y_train[train]),
                ArrayDataset(a.x_train[val], a.y_train[val]),
            )
        if location is None or location.path is None:
            raise ValueError("text data needs the model's directory (its tokenizer)")
        assert self.records is not None
        tokenizer = load_tokenizer(location.path)

        def tokenised(records: list[dict[str, Any]]) -> TextDataset:
            return TextDataset.from_records(
                records,
                tokenizer,
                self.spec.task_type,
                max_seq_len=max_seq_len,
                label_names=self.spec.label_names,
                num_labels=self.spec.num_labels,
            )

        data = tokenised(self.records)
        if self.val_records is not None:
            return data, tokenised(self.val_records)
        return data.split(val_fraction, seed)


def read_training_data(
    path: str | Path, val_path: str | Path | None, spec: ModelSpec
) -> DeviceData:
    """Read and check ``path`` (and ``val_path``) for ``spec``'s model; torch-free."""
    if spec.is_builtin:
        classes = int(spec.num_labels or 0) or _builtin_classes(spec)
        arrays = read_arrays(path, classes)
        if val_path is not None:
            val = read_arrays(val_path, classes)
            arrays = LocalData(arrays.x_train, arrays.y_train, val.x_train, val.y_train)
        return DeviceData(spec, arrays=arrays)
    records = read_records(path, spec.task_type)
    val_records = read_records(val_path, spec.task_type) if val_path is not None else None
    if spec.task_type == "SEQ_CLS":
        from client_sdk.datafile import label_ids

        assert spec.num_labels is not None  # ModelSpec requires it for SEQ_CLS
        for name, rows in ((path, records), (val_path, val_records)):
            if rows is not None:
                try:
                    label_ids([r["label"] for r in rows], spec.label_names, spec.num_labels)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
    return DeviceData(spec, records=records, val_records=val_records)


def load_tokenizer(path: Path) -> Any:
    """The model's own tokenizer, from its directory only (nothing is downloaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _builtin_classes(spec: ModelSpec) -> int:
    from client_sdk.model_spec import locate_model

    classes = locate_model(spec.source).num_labels
    assert classes is not None  # every built-in config names its classes
    return classes
