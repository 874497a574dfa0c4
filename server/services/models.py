"""A job's model: found, read without weights, and turned into the shapes the job expects.

The coordinator builds the same peft model a device builds (client_sdk.models), on the meta
device, so the stored ``modules`` and ``extra`` are exactly what peft gives every client.
"""

from __future__ import annotations

from client_sdk.model_spec import ModelNotFound, locate_model
from server.errors import Conflict, InvalidRequest
from server.schemas.job_spec import JobSpec


def with_derived_layout(spec: JobSpec) -> JobSpec:
    """``spec`` with ``modules``, ``extra`` and ``model.config_sha256`` read off its model.

    A spec without a model is returned as it is (its modules were written by hand).
    """
    model = spec.model
    if model is None:
        return spec
    if spec.modules or spec.extra:
        raise InvalidRequest(
            "give model or modules/extra, not both: the shapes are derived from the model"
        )
    try:
        location = locate_model(model.source, model.revision)
    except ModelNotFound as exc:
        raise InvalidRequest(f"model.source: {exc}") from None
    if model.config_sha256 is not None and model.config_sha256 != location.config_sha256:
        raise InvalidRequest(
            f"model.config_sha256 pins {model.config_sha256[:12]}..., but the config of "
            f"{model.source} hashes to {location.config_sha256[:12]}...: another model or "
            "another revision"
        )
    try:
        from client_sdk.models import ModelSpecError, derive_layout
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidRequest(
            f"this coordinator cannot read models ({exc.name} is missing): install flaas[server]"
        ) from None
    try:
        layout = derive_layout(model, location)
    except ModelSpecError as exc:
        raise InvalidRequest(f"model: {exc}") from None
    except (ValueError, KeyError, OSError, TypeError) as exc:
        # transformers' errors for a config it cannot build (unknown model_type, ...).
        raise InvalidRequest(f"model: cannot build {model.source}: {exc}") from None
    if not layout.modules:
        raise InvalidRequest(f"model: target_modules adapt no module of {model.source}")
    return spec.model_copy(
        update={
            "model": model.model_copy(update={"config_sha256": location.config_sha256}),
            "modules": dict(layout.modules),
            "extra": {name: list(shape) for name, shape in layout.extra.items()},
        }
    )


def check_same_model(spec: JobSpec, device_sha256: str | None) -> None:
    """A device whose model's config differs from the job's cannot enrol (409)."""
    model = spec.model
    if model is None or device_sha256 is None or model.config_sha256 is None:
        return
    if device_sha256 != model.config_sha256:
        revision = f" at revision {model.revision}" if model.revision else ""
        raise Conflict(
            f"this device's model (config sha256 {device_sha256[:12]}...) is not the job's "
            f"model {model.source}{revision} (config sha256 {model.config_sha256[:12]}...): "
            "load the same model (same architecture, sizes and head) and enrol again"
        )
