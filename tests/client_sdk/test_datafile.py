"""The `flaas client join --data` formats: .npz (X, y) and text,label CSV / JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client_sdk.datafile import label_indices, load_local_data, read_texts


class Digits:
    name, num_classes = "digits", 10


def test_npz_is_split_into_train_and_validation(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 64))
    y = np.arange(50) % 10
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    data = load_local_data(tmp_path / "mine.npz", Digits(), val_fraction=0.2)
    assert data.x_train.shape == (40, 64) and data.x_train.dtype == np.float32
    assert data.y_val is not None and len(data.y_val) == 10
    assert sorted(np.concatenate([data.y_train, data.y_val])) == sorted(y)
    np.savez(tmp_path / "val.npz", X=x, y=y, X_val=x[:5], y_val=y[:5])
    given = load_local_data(tmp_path / "val.npz", Digits())
    assert len(given.y_train) == 50 and len(given.y_val) == 5


def test_bad_files_are_explained(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((3, 64)))
    with pytest.raises(ValueError, match="arrays named X and y"):
        load_local_data(tmp_path / "a.npz", Digits())
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 64)), y=np.array([0, 1, 12]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        load_local_data(tmp_path / "b.npz", Digits())
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match="use .npz"):
        load_local_data(tmp_path / "c.txt", Digits())
    (tmp_path / "d.csv").write_text("text,label\nhi,0\n")
    with pytest.raises(ValueError, match="for the trec task"):
        load_local_data(tmp_path / "d.csv", Digits())


def test_text_records_from_csv_and_jsonl_with_names_or_indices(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('text,label\n"Who wrote it, then?",HUM\nHow far?,5\n')
    rows = [{"text": "Who wrote it, then?", "label": "HUM"}, {"text": "How far?", "label": 5}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    names = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name in ("q.csv", "q.jsonl"):
        texts, labels = read_texts(tmp_path / name)
        assert texts == ["Who wrote it, then?", "How far?"]
        assert label_indices(labels, names, 6).tolist() == [3, 5]
    with pytest.raises(ValueError, match="label 'WHO'"):
        label_indices(["WHO"], names, 6)
    (tmp_path / "bad.csv").write_text("question,label\nx,1\n")
    with pytest.raises(ValueError, match="text and label"):
        read_texts(tmp_path / "bad.csv")
