"""Global adapters out in peft's format: a directory ``PeftModel.from_pretrained`` loads as it is.

The store keeps every global adapter *folded*, A' = sqrt(s) A and B' = sqrt(s) B, so that
dW = B' A' and adapters of different ranks and scales can be averaged (docs/algorithms.md).
peft applies its own scale, s = alpha / r (alpha / sqrt(r) with rsLoRA), to B A. An export
therefore unfolds the factors at the adapter's rank (the job's r_max) and at the alpha a client
of that rank trains with, so that the ``r`` and ``lora_alpha`` in ``adapter_config.json`` are
true and peft's s B A equals the stored B' A'. The unfolding is the strategy's own
``distribute``: an export is what a client of rank r_max would receive.

Beside the adapter lies ``flaas_lineage.json``: which job, round, strategy, clients and model
it came from, with the SHA-256 of both the exported weights and the stored adapter. Every byte
of an export is a function of the database and the stored adapter, so two exports of one round
are identical.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from client_sdk.adapter_export import (
    CONFIG_FILE,
    LINEAGE_FILE,
    WEIGHTS_FILE,
    config_json,
    lineage_json,
)
from client_sdk.model_spec import ModelSpec
from client_sdk.trainer_settings import AdapterConfig
from server.aggregation import Strategy, lora_scale
from server.db.models import CLIENT_ORDER, Client, ClientUpdate, Job, Round, UpdateStatus
from server.errors import NotExportable
from server.services.adapters import operator_adapter
from server.services.jobs import get_job
from server.services.strategies import client_alpha, spec_of, strategy_for
from server.storage import AdapterStore
from server.tensors import load_adapter, save_adapter


@dataclass(frozen=True)
class PeftExport:
    """One round's global adapter as peft's files, with its lineage."""

    job_id: uuid.UUID
    round_number: int
    created_at: datetime  # when the round's global adapter was written: the archive's dates
    files: dict[str, bytes]  # file name -> bytes: config, weights, lineage

    @property
    def name(self) -> str:
        """The archive's stem and top folder: ``<job>-round<N>-peft``."""
        return f"{self.job_id}-round{self.round_number}-peft"

    def zip_bytes(self) -> bytes:
        """A zip whose folder ``name`` holds the files; equal exports give equal bytes.

        Entries carry the adapter's own timestamp and fixed permissions (never the clock).
        The weights are stored, not deflated: trained float32 values barely compress.
        """
        stamp = self.created_at.timetuple()[:6]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for file_name, data in self.files.items():
                info = zipfile.ZipInfo(f"{self.name}/{file_name}", date_time=stamp)
                info.external_attr = 0o644 << 16
                info.compress_type = (
                    zipfile.ZIP_STORED if file_name == WEIGHTS_FILE else zipfile.ZIP_DEFLATED
                )
                archive.writestr(info, data)
        return buffer.getvalue()


def peft_export(
    session: Session, store: AdapterStore, job_id: uuid.UUID, round_number: int | None
) -> PeftExport:
    """The global adapter of a closed round (default: the newest) in peft's format.

    Raises ``NotFound`` for an unknown job or a round without a global adapter, and
    :class:`NotExportable` (409) when the job has no global B (FedSA, VeRA: each device holds
    its own) or names no base model (modules written by hand).
    """
    job = get_job(session, job_id)
    strategy = strategy_for(job)
    spec = spec_of(job)
    model = _exportable_model(job, strategy, spec.model)
    adapter = operator_adapter(session, job_id, round_number)
    number = session.get_one(Round, adapter.round_id).number
    config = AdapterConfig(
        adapter.rank, client_alpha(spec, adapter.rank), strategy.use_rslora, "lora"
    )
    with store.local_path(adapter.storage_key) as path:
        folded = load_adapter(path)
    config_bytes, weights = peft_files(model, strategy, folded, config)
    lineage: dict[str, Any] = {
        "job": {"id": str(job.id), "name": job.name},
        "round": number,
        "strategy": job.strategy,
        "strategy_options": job.strategy_options,
        "r_min": job.r_min,
        "r_max": job.r_max,
        "lora_alpha": config.lora_alpha,
        "use_rslora": config.use_rslora,
        "updates": _accepted_updates(session, adapter.round_id),
        "adapter_model_sha256": sha256(weights).hexdigest(),
        "global_adapter_sha256": adapter.sha256,
        "model": {
            "source": model.source,
            "revision": model.revision,
            "config_sha256": model.config_sha256,
        },
        "created_at": adapter.created_at.isoformat(),
    }
    return PeftExport(
        job_id=job.id,
        round_number=number,
        created_at=adapter.created_at,
        files={
            CONFIG_FILE: config_bytes,
            WEIGHTS_FILE: weights,
            LINEAGE_FILE: lineage_json(lineage),
        },
    )


def peft_files(
    model: ModelSpec,
    strategy: Strategy,
    folded: Mapping[str, torch.Tensor],
    adapter: AdapterConfig,
) -> tuple[bytes, bytes]:
    """``(adapter_config.json, adapter_model.safetensors)`` of a folded global adapter.

    The factors are unfolded at ``adapter``'s rank, alpha and rsLoRA flag (A = A' / sqrt(s),
    B = B' / sqrt(s)); shared extras such as a ``modules_to_save`` head are kept as stored.
    The keys are the stored ones, which are already peft's state-dict keys.
    """
    scale = lora_scale(adapter.rank, adapter.lora_alpha, rslora=adapter.use_rslora)
    tensors = strategy.distribute(folded, adapter.rank, scale)
    return config_json(model, adapter), save_adapter(tensors)


def _exportable_model(job: Job, strategy: Strategy, model: ModelSpec | None) -> ModelSpec:
    """The job's model, or :class:`NotExportable` saying why its adapter cannot be exported."""
    if strategy.adapter_type == "vera" or strategy.is_private("lora_B"):
        raise NotExportable(
            f"job {job.id} uses {job.strategy}: no global B exists, each device holds its own "
            "B; export the personalised adapter on the device with "
            "`flaas client export --state-dir DIR --out DIR`"
        )
    if model is None:
        raise NotExportable(
            f"job {job.id} names no base model (its modules were written by hand), so no "
            "peft adapter_config.json can be made; download the raw adapter instead "
            "(format=safetensors)"
        )
    return model


def _accepted_updates(session: Session, round_id: uuid.UUID) -> dict[str, Any]:
    """Every accepted update of the round (client, rank, samples), in the order aggregation
    folded them (``CLIENT_ORDER``)."""
    rows = session.execute(
        select(ClientUpdate.client_id, ClientUpdate.rank, ClientUpdate.n_samples)
        .join(Client, Client.id == ClientUpdate.client_id)
        .where(ClientUpdate.round_id == round_id, ClientUpdate.status == UpdateStatus.ACCEPTED)
        .order_by(*CLIENT_ORDER)
    ).all()
    return {
        "count": len(rows),
        "clients": [
            {"client_id": str(client), "rank": rank, "n_samples": n} for client, rank, n in rows
        ],
    }
