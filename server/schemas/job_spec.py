"""The job spec: what an operator submits to ``POST /api/v1/jobs`` (or ``flaas job create``).

Every field has a default or a bound; nothing waits forever. Cross-field rules (rank
bounds, enrolment sizes, the strategy and its options) are checked here or, for the
strategy, by the aggregation library when the job is created.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from client_sdk.model_spec import ModelSpec
from server.autorank import DEFAULT_REFERENCE_SAMPLES, AutoRankError, allowed_ranks
from server.limits import MAX_DEADLINE_S, MAX_RANK, MAX_SAMPLES, MAX_UPLOAD_BUDGET

_MODULE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")

Seconds = Annotated[float, Field(gt=0, le=MAX_DEADLINE_S)]
Dim = Annotated[int, Field(ge=1, le=1 << 20)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankBudgetSpec(_Strict):
    """What AutoRank may spend, exactly one of: a mean rank, or upload bytes per round."""

    mean_rank: float | None = Field(
        default=None, gt=0, le=MAX_RANK, description="The cohort's mean rank is at most this."
    )
    upload_bytes_per_round: int | None = Field(
        default=None,
        ge=1,
        le=MAX_UPLOAD_BUDGET,
        description="A round's uploads (the sampled clients' adapters, F32 tensor bytes, the "
        "largest sample the round can draw) are at most this.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RankBudgetSpec:
        if (self.mean_rank is None) == (self.upload_bytes_per_round is None):
            raise ValueError("rank.budget takes exactly one of mean_rank or upload_bytes_per_round")
        return self


class RankPolicy(_Strict):
    """How each client's LoRA rank is chosen, and its bounds."""

    policy: Literal["autorank", "fixed"] = Field(
        default="autorank",
        description="autorank: CRITIC + TOPSIS over the clients' data complexity; "
        "fixed: every client gets default_rank.",
    )
    r_min: int = Field(default=2, ge=1, le=MAX_RANK)
    r_max: int = Field(default=16, ge=1, le=MAX_RANK, description="Also the global adapter's rank.")
    default_rank: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RANK,
        description="Rank for fixed policy, one client or a tie (default: midpoint of the bounds).",
    )
    grid: Literal["multiple_of_4", "power_of_two"] | list[int] | None = Field(
        default=None, description="Snap assigned ranks to this grid."
    )
    reference: Literal["bounds", "cohort"] = Field(
        default="bounds",
        description="bounds: score every criterion against its theoretical range (alike clients "
        "get alike ranks); cohort: against the cohort's best and worst client, stretched onto "
        "[r_min, r_max] (the behaviour before bounds existed).",
    )
    reference_samples: int = Field(
        default=DEFAULT_REFERENCE_SAMPLES,
        ge=2,
        le=MAX_SAMPLES,
        description="bounds reference: the sample count at which the size criterion saturates.",
    )
    budget: RankBudgetSpec | None = Field(
        default=None,
        description="Spend at most this: every client's score moves by one shift until the "
        "budget is met (autorank only).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> RankPolicy:
        if self.r_min > self.r_max:
            raise ValueError(f"rank.r_min ({self.r_min}) must not exceed rank.r_max ({self.r_max})")
        if self.default_rank is not None and not self.r_min <= self.default_rank <= self.r_max:
            raise ValueError(
                f"rank.default_rank ({self.default_rank}) must lie in [{self.r_min}, {self.r_max}]"
            )
        if isinstance(self.grid, list) and (
            not self.grid or any(not self.r_min <= r <= self.r_max for r in self.grid)
        ):
            raise ValueError(f"rank.grid values must lie in [{self.r_min}, {self.r_max}]")
        if self.budget is not None:
            self._check_budget(self.budget)
        return self

    def _check_budget(self, budget: RankBudgetSpec) -> None:
        if self.policy != "autorank":
            raise ValueError('rank.budget needs rank.policy "autorank" (a fixed rank spends none)')
        if budget.mean_rank is None:
            return  # bytes depend on the model's layout: checked when the job is created
        try:
            allowed = allowed_ranks(self.r_min, self.r_max, self.grid)
        except AutoRankError as exc:
            raise ValueError(f"rank: {exc}") from None
        if budget.mean_rank < allowed[0]:
            raise ValueError(
                f"rank.budget.mean_rank ({budget.mean_rank:g}) is below the smallest rank a "
                f"client can get ({allowed[0]}): lower rank.r_min or raise the budget"
            )
        if budget.mean_rank > allowed[-1]:
            raise ValueError(
                f"rank.budget.mean_rank ({budget.mean_rank:g}) is above the largest rank a "
                f"client can get ({allowed[-1]}), so it can never be spent: raise rank.r_max "
                "or lower the budget"
            )

    @property
    def default(self) -> int:
        return self.default_rank or (self.r_min + self.r_max) // 2


class LoraSettings(_Strict):
    """LoRA scaling: s = alpha / r (or alpha / sqrt(r) with rsLoRA strategies)."""

    lora_alpha: float = Field(default=16.0, gt=0, le=1e6)
    alpha_per_rank: bool = Field(
        default=False,
        description="If true, a client of rank r uses alpha = lora_alpha * r (constant scale).",
    )


class EnrolmentPolicy(_Strict):
    """When enrolment closes and training starts."""

    min_clients: int = Field(default=2, ge=1, le=100_000)
    target_clients: int | None = Field(
        default=None, ge=1, le=100_000, description="Start as soon as this many clients enrolled."
    )
    timeout_s: Seconds = Field(
        default=600, description="Start when this passes with >= min_clients, else fail."
    )
    allow_late_join: bool = True

    @model_validator(mode="after")
    def _sizes(self) -> EnrolmentPolicy:
        if self.target_clients is not None and self.target_clients < self.min_clients:
            raise ValueError("enrolment.target_clients must be >= enrolment.min_clients")
        return self


class SamplingPolicy(_Strict):
    """Which enrolled clients train in a round: max(minimum, ceil(fraction * enrolled))."""

    fraction: float = Field(default=1.0, gt=0, le=1)
    minimum: int = Field(default=1, ge=1, le=100_000)


class RoundPolicy(_Strict):
    """Deadline and quorum of every round."""

    timeout_s: Seconds = Field(default=600)
    min_updates: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Quorum at the deadline (default: half the sampled clients, at least 1).",
    )
    on_deadline: Literal["extend", "fail"] = Field(
        default="extend", description="What to do when the deadline passes below quorum."
    )
    max_extensions: int = Field(default=2, ge=0, le=100)


class TrainingSettings(_Strict):
    """Local training settings sent to every client with its task."""

    epochs: int | None = Field(default=1, ge=1, le=1000)
    steps: int | None = Field(default=None, ge=1, le=1_000_000)
    lr: float = Field(default=1e-3, gt=0, le=10)
    batch_size: int = Field(default=16, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Batches summed into one optimiser step."
    )
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingSettings:
        if self.epochs is None and self.steps is None:
            raise ValueError("training needs epochs or steps")
        return self


class JobSpec(_Strict):
    """A federated LoRA fine-tuning job."""

    name: str = Field(min_length=1, max_length=200)
    model: ModelSpec | None = Field(
        default=None,
        description="The model to fine-tune; the coordinator derives modules and extra from it "
        "(give either model or modules).",
    )
    modules: dict[str, tuple[Dim, Dim]] = Field(
        default_factory=dict,
        max_length=10_000,
        description="Adapted layers: peft key prefix -> [in_features, out_features], e.g. "
        '{"base_model.model.fc1": [64, 128]}. Derived from model when it is given; written '
        "by hand only for clients that train with their own code.",
    )
    extra: dict[str, list[Dim]] = Field(
        default_factory=dict,
        max_length=1_000,
        description="Other trainable tensors (e.g. a classifier head): state-dict key -> shape.",
    )
    strategy: str = Field(default="rbla-shrink", max_length=40)
    strategy_options: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, max_length=32
    )
    rank: RankPolicy = Field(default_factory=RankPolicy)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    rounds: int = Field(default=10, ge=1, le=10_000)
    enrolment: EnrolmentPolicy = Field(default_factory=EnrolmentPolicy)
    sampling: SamplingPolicy = Field(default_factory=SamplingPolicy)
    round: RoundPolicy = Field(default_factory=RoundPolicy)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    seed: int | None = Field(default=None, ge=0, le=2**62)

    @model_validator(mode="after")
    def _model_or_modules(self) -> JobSpec:
        if self.model is None and not self.modules:
            raise ValueError("give the model to fine-tune (model.source) or its modules")
        return self

    @field_validator("modules", "extra")
    @classmethod
    def _keys(cls, value: dict[str, object]) -> dict[str, object]:
        for key in value:
            if len(key) > 300 or not _MODULE_KEY.match(key):
                raise ValueError(f"invalid tensor/module key {key!r}: use dotted identifiers")
        return value

    @field_validator("extra")
    @classmethod
    def _extra_shapes(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for key, shape in value.items():
            if not 1 <= len(shape) <= 4:
                raise ValueError(f"extra tensor {key!r} must have 1 to 4 dimensions")
        return value
