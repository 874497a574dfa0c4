"""``flaas client export``: a device's personalised adapter, in peft's format.

Under FedSA-LoRA no global B exists: every device keeps its own B (and head) and shares only A.
The device's model is the newest global A with its private B and head, at the device's rank and
alpha. This module fetches that A (``GET /api/v1/clients/me/adapter``) with the stored client
credential, joins it with the private tensors kept in the state directory, and writes a
directory ``PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from client_sdk.adapter_export import WEIGHTS_FILE, peft_adapter_files, write_adapter_dir
from client_sdk.api import ApiClient
from client_sdk.model_spec import ModelSpec
from client_sdk.state import DeviceState
from client_sdk.trainer_settings import AdapterConfig
from client_sdk.wire_format import decode_update


@dataclass(frozen=True)
class DeviceExport:
    """What was written: the directory, the adapter's rank and the round its B was trained in."""

    directory: Path
    rank: int
    round: int
    adapter_sha256: str


def find_job_state(state_dir: str | Path, job_id: str | None = None) -> DeviceState:
    """The state directory of one job: ``state_dir`` itself, or the one job folder under it
    (``job_id`` picks one when several jobs were joined from this device)."""
    root = Path(state_dir).expanduser()
    if (root / "credentials.json").is_file():
        return DeviceState(root)
    joined = sorted(p.parent for p in root.glob("*/credentials.json"))
    if job_id is not None:
        joined = [p for p in joined if (DeviceState(p).load_job() or {}).get("job_id") == job_id]
    if len(joined) == 1:
        return DeviceState(joined[0])
    if not joined:
        which = f" for job {job_id}" if job_id else ""
        raise ValueError(f"{root} holds no joined job{which} (no credentials.json)")
    names = ", ".join(p.name for p in joined)
    raise ValueError(f"{root} holds several jobs ({names}): pick one with --job ID")


def export_personalised(
    state: DeviceState, out_dir: str | Path, *, api: ApiClient | None = None
) -> DeviceExport:
    """Write this device's adapter (newest global A + private B and head) into ``out_dir``."""
    job = state.load_job()
    credentials = state.load_credentials()
    if job is None or credentials is None:
        raise ValueError(f"{state.directory} is not the state of a joined job")
    if job.get("model") is None:
        raise ValueError(
            "the job names no model (its modules were written by hand): nothing tells which "
            "base model this adapter belongs to"
        )
    private_bytes = state.load_private_bytes()
    if private_bytes is None:
        raise ValueError(
            "this device keeps no private tensors: its job shares the whole adapter, so the "
            "global one is the model: export it with `flaas adapter export --job ID`"
        )
    private, meta = decode_update(private_bytes)
    adapter = AdapterConfig(
        int(meta["rank"]),
        float(meta["lora_alpha"]),
        meta.get("use_rslora") == "true",
        meta["adapter_type"],
    )
    api = api or ApiClient(str(job["server"]))
    api.token = credentials.token
    received = api.download("/api/v1/clients/me/adapter")
    incoming, _ = decode_update(received)
    shared = {k: v for k, v in incoming.items() if k not in private}
    spec = ModelSpec.model_validate(job["model"])
    files = peft_adapter_files(
        spec,
        adapter,
        {**shared, **private},
        {
            "job_id": str(job["job_id"]),
            "client_id": credentials.client_id,
            "strategy": meta.get("strategy"),
            "round": int(meta.get("round", 0)),
            "personalised": True,
            "received_sha256": hashlib.sha256(received).hexdigest(),
        },
    )
    directory = write_adapter_dir(files, out_dir)
    return DeviceExport(
        directory,
        adapter.rank,
        int(meta.get("round", 0)),
        hashlib.sha256(files[WEIGHTS_FILE]).hexdigest(),
    )
