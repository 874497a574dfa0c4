"""A job names its model: the coordinator derives the shapes, checks targets and identities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM

from client_sdk.model_spec import locate_model
from client_sdk.wire_format import decode_update
from tests.hf_models import tiny_gpt2, tiny_llama
from tests.support import bearer, job_spec, operator, stats


def create(api: TestClient, model: dict[str, Any], **overrides: Any) -> Any:
    spec = job_spec(**overrides)
    del spec["modules"], spec["extra"]
    return api.post("/api/v1/jobs", json={**spec, "model": model}, headers=operator(api))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def _linear_shapes(model: torch.nn.Module, suffixes: tuple[str, ...]) -> dict[str, list[int]]:
    """``[in, out]`` of every Linear (or GPT-2 Conv1D) whose name ends with a suffix."""
    shapes = {}
    for name, module in model.named_modules():
        if not name.endswith(suffixes):
            continue
        if isinstance(module, torch.nn.Linear):
            shapes[f"base_model.model.{name}"] = [module.in_features, module.out_features]
        elif type(module).__name__ == "Conv1D":  # weight (in, out)
            shapes[f"base_model.model.{name}"] = list(module.weight.shape)
    return shapes


def test_shapes_are_derived_from_the_models_config(api: TestClient, llama: Path) -> None:
    created = create(
        api,
        {"source": str(llama), "task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"]},
    )
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    loaded = AutoModelForCausalLM.from_pretrained(llama, local_files_only=True)
    expected = _linear_shapes(loaded, (".q_proj", ".v_proj"))
    assert len(expected) == 4 and spec["modules"] == expected
    assert spec["extra"] == {}
    assert spec["model"]["config_sha256"] == locate_model(str(llama)).config_sha256

    every = create(api, {"source": str(llama), "task_type": "CAUSAL_LM"})  # all-linear
    assert every.status_code == 201, every.text
    linear = _linear_shapes(loaded, ("_proj",))  # peft's all-linear leaves out lm_head
    assert every.json()["spec"]["modules"] == linear and len(linear) == 14


def test_gpt2_conv1d_and_a_regex_target(api: TestClient, gpt2: Path) -> None:
    created = create(
        api, {"source": str(gpt2), "task_type": "CAUSAL_LM", "target_modules": r".*\.attn\.c_attn"}
    )
    assert created.status_code == 201, created.text
    loaded = AutoModelForCausalLM.from_pretrained(gpt2, local_files_only=True)
    assert created.json()["spec"]["modules"] == _linear_shapes(loaded, ("attn.c_attn",))
    shapes = {tuple(v) for v in created.json()["spec"]["modules"].values()}
    assert shapes == {(32, 96)}  # Conv1D's weight is (in, out): in 32, out 3 x 32


def test_classifier_heads_are_derived_as_extra(api: TestClient) -> None:
    created = create(
        api,
        {
            "source": "flaas:digits",
            "task_type": "SEQ_CLS",
            "target_modules": ["fc1", "fc2"],
            "modules_to_save": ["fc3"],
        },
    )
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    assert spec["modules"] == {
        "base_model.model.fc1": [64, 128],
        "base_model.model.fc2": [128, 128],
    }
    assert spec["extra"] == {
        "base_model.model.fc3.weight": [10, 128],
        "base_model.model.fc3.bias": [10],
    }


@pytest.mark.parametrize(
    ("model", "phrases"),
    [
        ({"target_modules": ["q_proj", "qkv"]}, ["'qkv' match no module", "q_proj", "v_proj"]),
        ({"target_modules": r".*\.attention\.wq"}, [r"match no module", "o_proj"]),
        ({"modules_to_save": ["score"]}, ["modules_to_save 'score'"]),
        ({"config_sha256": "0" * 64}, ["pins 000000000000", "another model"]),
        ({"task_type": "SEQ_CLS"}, ["num_labels"]),
    ],
)
def test_a_spec_the_model_cannot_serve_is_a_422_that_says_why(
    api: TestClient, llama: Path, model: dict[str, Any], phrases: list[str]
) -> None:
    refused = create(api, {"source": str(llama), "task_type": "CAUSAL_LM", **model})
    assert refused.status_code == 422, refused.text
    for phrase in phrases:
        assert phrase in str(refused.json()["detail"]), refused.json()


def test_a_missing_model_is_a_422_that_says_where_it_looked(
    api: TestClient, tmp_path: Path
) -> None:
    missing = create(api, {"source": str(tmp_path / "nowhere"), "task_type": "CAUSAL_LM"})
    assert missing.status_code == 422
    detail = missing.json()["detail"]
    assert f"no directory {tmp_path / 'nowhere'}" in detail and "Hugging Face cache" in detail
    hub = create(api, {"source": "acme/not-downloaded", "task_type": "CAUSAL_LM"})
    assert hub.status_code == 422 and "not in the Hugging Face cache" in hub.json()["detail"]
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = create(api, {"source": str(empty), "task_type": "CAUSAL_LM"})
    assert no_config.status_code == 422 and "config.json" in no_config.json()["detail"]
    both = api.post(
        "/api/v1/jobs",
        json={**job_spec(), "model": {"source": "flaas:digits", "task_type": "SEQ_CLS"}},
        headers=operator(api),
    )
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    # A NUL byte (found by the schema fuzzer: it was a 500 from the path lookup) or another
    # control character is in no path and no hub id.
    for source, revision in [("\x00", None), ("acme/model\n", None), ("acme/model", "main\x00")]:
        bad = create(api, {"source": source, "revision": revision, "task_type": "CAUSAL_LM"})
        assert bad.status_code == 422, bad.text
        assert "body.model." in bad.json()["detail"]


def test_devices_read_the_model_and_a_different_one_cannot_enrol(
    api: TestClient, llama: Path, gpt2: Path
) -> None:
    job = create(api, {"source": str(llama), "task_type": "CAUSAL_LM"}).json()
    seen = api.get(f"/api/v1/jobs/{job['id']}/model", headers=bearer(job["join_token"]))
    assert seen.status_code == 200
    assert seen.json()["model"]["config_sha256"] == job["spec"]["model"]["config_sha256"]
    assert seen.json()["training"]["batch_size"] == job["spec"]["training"]["batch_size"]
    wrong_token = api.get(f"/api/v1/jobs/{job['id']}/model", headers=bearer("flj_nope"))
    assert wrong_token.status_code == 401

    enrol = f"/api/v1/jobs/{job['id']}/clients"
    other = locate_model(str(gpt2)).config_sha256
    refused = api.post(
        enrol, json={"stats": stats(50), "model_sha256": other}, headers=bearer(job["join_token"])
    )
    assert refused.status_code == 409
    assert "is not the job's model" in refused.json()["detail"]
    assert other[:12] in refused.json()["detail"]
    same = locate_model(str(llama)).config_sha256
    accepted = api.post(
        enrol, json={"stats": stats(50), "model_sha256": same}, headers=bearer(job["join_token"])
    )
    assert accepted.status_code == 201, accepted.text
    listed = api.get(f"/api/v1/jobs/{job['id']}/clients", headers=operator(api)).json()
    assert listed["total"] == 1  # the refused device was not enrolled


def test_round_one_sends_no_extras_for_a_model_job(api: TestClient) -> None:
    """Devices start from their model's own saved modules (a pretrained lm_head, or a new head
    drawn from the trainer's fixed seed); the round-0 draw only gives the adapter its layout."""
    job = create(
        api,
        {
            "source": "flaas:digits",
            "task_type": "SEQ_CLS",
            "target_modules": ["fc1", "fc2"],
            "modules_to_save": ["fc3"],
        },
    ).json()
    credentials = []
    for i in range(3):
        enrolled = api.post(
            f"/api/v1/jobs/{job['id']}/clients",
            json={"stats": stats(20 + 10 * i)},
            headers=bearer(job["join_token"]),
        )
        credentials.append(enrolled.json()["credential"])
    task = api.get("/api/v1/clients/me/task", headers=bearer(credentials[0])).json()
    assert task["action"] == "train" and task["model"]["source"] == "flaas:digits"
    received = api.get(task["adapter_url"], headers=bearer(credentials[0]))
    keys = set(decode_update(received.content)[0])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys), sorted(keys)
