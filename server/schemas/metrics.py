"""Response bodies of the monitoring endpoints: per-round metrics, job summary, client activity."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from server.schemas.api import ClientOut

ClientState = Literal["enrolled", "training", "active", "straggling"]


class MetricStats(BaseModel):
    """One client-reported metric across a round's accepted updates."""

    n: int
    mean: float
    std: float
    min: float
    max: float


class RoundMetrics(BaseModel):
    """What happened in one round, in numbers (one row of a chart)."""

    number: int
    status: str
    sampled: int
    quorum: int
    participants: int = Field(description="Clients sampled into the round (update rows).")
    accepted: int
    stragglers: int = Field(description="Sampled clients whose update never arrived (missed).")
    pending: int = Field(description="Sampled clients still expected (open round).")
    rejected_uploads: int = Field(description="Uploads refused by validation, all clients.")
    rejected_clients: int = Field(description="Clients with at least one refused upload.")
    opened_at: datetime
    aggregating_at: datetime | None
    closed_at: datetime | None
    open_seconds: float | None = Field(description="open -> aggregating (or now, if open).")
    aggregating_seconds: float | None = Field(description="aggregating -> closed.")
    metrics: dict[str, MetricStats] = Field(
        description="Client-reported metrics (train_loss, val_loss, ...) over accepted updates."
    )
    bytes_up: int = Field(description="Sum of the accepted updates' sizes.")
    bytes_down_estimate: int = Field(
        description=(
            "Estimate of what the participants downloaded: for each participant, the float32 "
            "payload of the adapter cut to its rank (safetensors header and retries excluded)."
        )
    )
    global_adapter_bytes: int | None
    coverage: list[float] | None = Field(
        description="Samples that trained each rank slice of the global adapter."
    )


class RankBin(BaseModel):
    rank: int | None
    clients: int


class RankBudgetOutcome(BaseModel):
    """What AutoRank's budget did when the ranks were assigned (docs/algorithms.md)."""

    kind: Literal["mean_rank", "upload_bytes_per_round"]
    limit: float
    spent: float = Field(description="The cost the assigned ranks reach (<= limit when met).")
    shift: float = Field(description="The one shift added to every client's score.")
    status: Literal["met", "below_minimum", "above_maximum"] = Field(
        description="below_minimum: everyone at r_min still costs more (clamped); "
        "above_maximum: everyone at r_max spends less."
    )


class JobSummary(BaseModel):
    """Cohort-level facts a dashboard header needs, without the per-client matrix."""

    clients: int
    client_states: dict[ClientState, int]
    rank_histogram: list[RankBin]
    autorank_policy: str | None
    criteria: list[str]
    critic_weights: list[float] | None
    dropped_criteria: list[int]
    autorank_reference: Literal["bounds", "cohort"] | None = Field(
        default=None, description="What TOPSIS closeness was measured against."
    )
    rank_budget: RankBudgetOutcome | None = None


class JobEvent(BaseModel):
    """The payload of a job's server-sent ``progress`` event: enough to know what changed."""

    status: str
    current_round: int
    total_rounds: int
    updated_at: datetime
    round_status: str | None
    accepted: int
    ended: bool = Field(description="Whether the job can no longer change: the stream ends.")


class ClientActivity(ClientOut):
    """A client with what it did lately: its state and how many rounds it missed."""

    state: ClientState
    rounds_missed: int
    last_round: int | None = Field(description="The latest round the client was sampled in.")
