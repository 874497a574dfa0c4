"""Adapters out in peft's own format: a directory ``PeftModel.from_pretrained`` loads as it is.

``adapter_config.json`` is peft's config for the job's model at the adapter's true rank and
alpha, ``adapter_model.safetensors`` holds peft's state-dict keys, and ``flaas_lineage.json``
says where it came from (job, round, strategy, ranks, sha256 of the tensors). The coordinator
exports global adapters with it and a device its personalised one: one writer for both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from client_sdk.model_spec import ModelSpec
from client_sdk.trainer_settings import AdapterConfig
from client_sdk.wire_format import encode_update

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LINEAGE_FILE = "flaas_lineage.json"


def peft_adapter_files(
    spec: ModelSpec,
    adapter: AdapterConfig,
    tensors: Mapping[str, torch.Tensor],
    lineage: Mapping[str, Any],
) -> dict[str, bytes]:
    """The three files of a peft adapter directory, as bytes (identical for identical input).

    ``tensors`` must already be at the adapter's own scale (not folded); ``lineage`` gets the
    sha256 of the weights file and the adapter's rank and alpha added.
    """
    weights = encode_update(tensors, {"format": "pt"})
    record = {
        **lineage,
        "rank": adapter.rank,
        "lora_alpha": adapter.lora_alpha,
        "use_rslora": adapter.use_rslora,
        "adapter_type": adapter.adapter_type,
        "model": {
            "source": spec.source,
            "revision": spec.revision,
            "config_sha256": spec.config_sha256,
        },
        "adapter_sha256": hashlib.sha256(weights).hexdigest(),
    }
    return {
        CONFIG_FILE: config_json(spec, adapter),
        WEIGHTS_FILE: weights,
        LINEAGE_FILE: lineage_json(record),
    }


def config_json(spec: ModelSpec, adapter: AdapterConfig) -> bytes:
    """``adapter_config.json`` as ``PeftModel.save_pretrained`` writes it, deterministically.

    peft turns sets (``target_modules``) into lists in set order, which changes with Python's
    hash seed; they are sorted here, so equal configs give equal bytes in every process.
    """
    from client_sdk.models import peft_config  # torch + peft: only when exporting

    config = peft_config(spec, adapter)
    config.base_model_name_or_path = spec.source
    config.revision = spec.revision
    config.inference_mode = True  # what save_pretrained records
    fields = {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in config.to_dict().items()
    }
    return json.dumps(fields, indent=2, sort_keys=True).encode()


def lineage_json(record: Mapping[str, Any]) -> bytes:
    """``flaas_lineage.json``: sorted keys, so equal lineages give equal bytes."""
    return json.dumps(record, indent=2, sort_keys=True).encode()


def write_adapter_dir(files: Mapping[str, bytes], out_dir: str | Path) -> Path:
    """Write the files into ``out_dir`` (created; existing adapter files are replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out
