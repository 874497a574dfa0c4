"""The `flaas client join --data` formats: .npz (X, y) and text,label CSV / JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client_sdk.datafile import label_ids, read_arrays, read_records
from client_sdk.device_data import read_training_data
from client_sdk.model_spec import ModelSpec

DIGITS = ModelSpec(source="flaas:digits", task_type="SEQ_CLS", target_modules=["fc1"])


def test_npz_is_split_into_train_and_validation(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 64))
    y = np.arange(50) % 10
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    train, val = read_training_data(tmp_path / "mine.npz", None, DIGITS).datasets(None)
    assert len(train) == 40 and val is not None and len(val) == 10
    assert sorted(np.concatenate([train.labels, val.labels])) == sorted(y)
    np.savez(tmp_path / "val.npz", X=x, y=y, X_val=x[:5], y_val=y[:5])
    given = read_arrays(tmp_path / "val.npz", 10)
    assert given.x_train.dtype == np.float32 and len(given.y_train) == 50
    assert given.y_val is not None and len(given.y_val) == 5
    train, val = read_training_data(tmp_path / "mine.npz", tmp_path / "val.npz", DIGITS).datasets(
        None
    )
    assert len(train) == 50 and val is not None and len(val) == 50


def test_bad_files_are_explained(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((3, 64)))
    with pytest.raises(ValueError, match="arrays named X and y"):
        read_arrays(tmp_path / "a.npz", 10)
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 64)), y=np.array([0, 1, 12]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        read_arrays(tmp_path / "b.npz", 10)
    pixels = np.full((3, 64), 16.0)
    pixels[0, 0] = 2.0
    np.savez(tmp_path / "e.npz", X=pixels, y=np.array([0, 1, 2]))
    with pytest.raises(ValueError) as raw:
        read_arrays(tmp_path / "e.npz", 10)
    message = str(raw.value)  # the file, the range found and the range wanted
    assert message.startswith(f"{tmp_path / 'e.npz'}: X holds values in [2, 16];")
    assert "features in [0, 1]" in message
    ok = np.full((3, 64), 0.5)
    np.savez(tmp_path / "v.npz", X=ok, y=np.array([0, 1, 2]), X_val=ok - 1, y_val=np.zeros(3))
    with pytest.raises(ValueError, match=r"X_val holds values in \[-0.5, -0.5\]"):
        read_arrays(tmp_path / "v.npz", 10)
    ok[1, 1] = np.nan
    np.savez(tmp_path / "n.npz", X=ok, y=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="n.npz: X holds NaN or infinite values"):
        read_arrays(tmp_path / "n.npz", 10)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match=".npz files"):
        read_training_data(tmp_path / "c.txt", None, DIGITS)


def test_text_records_from_csv_and_jsonl_with_names_or_indices(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('text,label\n"Who wrote it, then?",HUM\nHow far?,5\n')
    rows = [{"text": "Who wrote it, then?", "label": "HUM"}, {"text": "How far?", "label": 5}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    names = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name in ("q.csv", "q.jsonl"):
        records = read_records(tmp_path / name, "SEQ_CLS")
        assert [record["text"] for record in records] == ["Who wrote it, then?", "How far?"]
        assert label_ids([record["label"] for record in records], names, 6).tolist() == [3, 5]
    with pytest.raises(ValueError, match="label 'WHO'"):
        label_ids(["WHO"], names, 6)
    (tmp_path / "bad.csv").write_text("question,label\nx,1\n")
    with pytest.raises(ValueError, match="text and label"):
        read_records(tmp_path / "bad.csv", "SEQ_CLS")
