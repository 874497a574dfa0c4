"""Response and request bodies of the REST API (separate from the tables)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from client_sdk.model_spec import ModelSpec
from server.limits import MAX_SAMPLES
from server.schemas.job_spec import JobSpec, TrainingSettings
from server.security import CLIENT_CREDENTIAL_PATTERN

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items`` plus what is needed to fetch the next one."""

    items: list[T]
    total: int
    limit: int
    offset: int


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class JobOut(_FromRow):
    id: uuid.UUID
    name: str
    status: str
    failure_reason: str | None
    strategy: str
    rank_policy: str
    r_min: int
    r_max: int
    total_rounds: int
    current_round: int
    enrolled_clients: int = 0
    created_at: datetime
    enrolment_deadline_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    spec: JobSpec
    autorank: dict[str, Any] | None = None


class JobCreated(JobOut):
    join_token: str = Field(description="Shown once: clients enrol with it. Stored hashed.")


class ComplexityStats(BaseModel):
    """Data-complexity statistics a client computes on its training data (scalars only).

    Strict: a JSON number for each criterion, an integer for the count (``true`` or ``"12"``
    are refused, not read as 1 and 12), as docs/protocol.md says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n_samples: int = Field(ge=1, le=MAX_SAMPLES)
    label_entropy: float | None = Field(default=None, ge=0, le=1)
    gini_simpson: float | None = Field(default=None, ge=0, le=1)
    loss_entropy: float | None = Field(default=None, ge=0, le=1)


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    stats: ComplexityStats
    name: str | None = Field(default=None, max_length=200)
    max_rank: int | None = Field(
        default=None, ge=1, le=1024, description="The device's capacity: assigned rank <= this."
    )
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the device's model config (client_sdk.model_spec.config_sha256); "
        "enrolment is refused (409) when it differs from the job's model.",
    )
    credential: str | None = Field(
        default=None,
        pattern=CLIENT_CREDENTIAL_PATTERN,
        description="The credential this device drew itself (`flc_` + at least 43 URL-safe "
        "characters: 256 random bits), kept on the device before it sends the request. "
        "Enrolling again with it (an answer lost on the way) answers 200 with the client it "
        "enrolled, whatever happened to the job since. Without it the coordinator draws the "
        "credential, and enrolling again is a second client (or 409 for a taken name).",
    )


class ClientOut(_FromRow):
    id: uuid.UUID
    job_id: uuid.UUID
    name: str | None
    stats: dict[str, Any]
    max_rank: int | None
    rank: int | None
    closeness: float | None
    enrolled_at: datetime
    last_seen_at: datetime = Field(
        description="The client's last authenticated request, precise to "
        "FLAAS_LAST_SEEN_INTERVAL_S (60 s by default): it is written at most that often."
    )
    rounds_contributed: int = 0


class JobModel(BaseModel):
    """What a device needs before it enrols: the job's model and how it trains."""

    job_id: uuid.UUID
    name: str
    strategy: str
    model: ModelSpec | None = Field(
        description="The model to load (null: the job's modules were written by hand)."
    )
    training: TrainingSettings


class JoinFacts(BaseModel):
    """What a person about to join a job is told (the ``/join`` page): public facts only, for
    a holder of the join token. Nothing about other clients."""

    job_id: uuid.UUID
    name: str
    status: str
    strategy: str
    model: ModelSpec | None = Field(
        description="The model the devices train (null: the job's modules were written by hand)."
    )
    total_rounds: int
    current_round: int
    r_min: int
    r_max: int
    shared_parts: list[str] = Field(
        description="Adapter parts every device uploads each round (lora_A, lora_B, ...; extra: "
        "the non-LoRA tensors, such as a classifier head)."
    )
    private_parts: list[str] = Field(
        description="Adapter parts that never leave the device (FedSA's lora_B)."
    )
    extra_tensors: list[str] = Field(
        description="The non-LoRA tensors the devices train in full (a head), if any."
    )


class Enrolled(BaseModel):
    client_id: uuid.UUID
    job_id: uuid.UUID
    credential: str = Field(description="Shown once: the client's bearer token. Stored hashed.")
    rank: int | None = Field(description="Assigned rank, or null until enrolment closes.")


class UpdateOut(_FromRow):
    id: uuid.UUID
    round_id: uuid.UUID
    client_id: uuid.UUID
    status: str
    rank: int
    n_samples: int | None
    sha256: str | None
    size_bytes: int | None
    metrics: dict[str, Any] | None
    upload_seconds: float | None
    assigned_at: datetime
    accepted_at: datetime | None
    rejections: int
    last_rejection: str | None


class GlobalAdapterOut(_FromRow):
    sha256: str
    size_bytes: int
    rank: int
    n_updates: int
    total_samples: int
    created_at: datetime


class RoundOut(_FromRow):
    id: uuid.UUID
    job_id: uuid.UUID
    number: int
    status: str
    failure_reason: str | None
    sampled: int
    quorum: int
    accepted: int = 0
    extensions: int
    opened_at: datetime
    deadline_at: datetime
    aggregating_at: datetime | None
    closed_at: datetime | None
    aggregation: dict[str, Any] | None
    global_adapter: GlobalAdapterOut | None = None


class RoundDetail(RoundOut):
    updates: list[UpdateOut]


class WaitTask(BaseModel):
    action: Literal["wait"] = "wait"
    retry_after: float = Field(description="Seconds to wait before asking again.")
    reason: str


class TrainAssignment(BaseModel):
    """What a sampled client trains in its round (``services.client_tasks``); the API answers
    it as a ``TrainTask``, which adds where to download the adapter and upload the update."""

    action: Literal["train"] = "train"
    job_id: uuid.UUID
    round_id: uuid.UUID
    round_number: int
    deadline_at: datetime
    rank: int
    lora_alpha: float
    use_rslora: bool
    adapter_type: str
    strategy: str
    shared_parts: list[str] = Field(description="Tensor parts to upload (lora_A, lora_B, ...).")
    frozen_parts: list[str] = Field(description="Parts the client must not train.")
    training: TrainingSettings
    model: ModelSpec | None = Field(
        description="The job's model (null when the job's modules were written by hand)."
    )
    seed: int


class TrainTask(TrainAssignment):
    adapter_url: str
    upload_url: str
    adapter: str | None = Field(
        default=None,
        description="The bytes adapter_url serves (base64), when they are at most "
        "FLAAS_INLINE_ADAPTER_MAX_BYTES: the client then need not download them.",
    )


class FinishedTask(BaseModel):
    action: Literal["finished"] = "finished"
    status: str
    reason: str | None


ClientTask = WaitTask | TrainTask | FinishedTask


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """The body of every error answer (4xx, 503): what went wrong and what to change."""

    detail: str = Field(description="One sentence for a person: what was refused and why")
    tensor: str | None = Field(
        default=None,
        description="An upload refused for one tensor of its adapter: that tensor's name",
    )
