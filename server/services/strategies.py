"""The one bridge between a job's spec and the aggregation library.

Everything the coordinator needs to know about a strategy (what a client uploads, what
it keeps private, which scale it trains at) is asked of the strategy object here.
"""

from __future__ import annotations

import math
from functools import lru_cache

from server.aggregation import AggregationError, Strategy, get_strategy, lora_scale
from server.aggregation.keys import ADAPTER_PARTS, part_of
from server.db.models import Job
from server.errors import InvalidRequest
from server.schemas.job_spec import JobSpec
from server.services.job_definitions import JobDefinition
from server.tensors import ITEMSIZE

#: A job row, or its cached definition: the strategy and the spec are all asked of either.
JobLike = Job | JobDefinition

UPLOAD_DTYPE = "F32"  # what the SDK uploads; F16/BF16 uploads are half of upload_bytes()


@lru_cache(maxsize=256)
def _cached_strategy(name: str, r_max: int, options: tuple[tuple[str, object], ...]) -> Strategy:
    return get_strategy(name, r_max=r_max, **dict(options))


def strategy_for_spec(spec: JobSpec) -> Strategy:
    """The spec's strategy; a bad name or option becomes a 422 naming what is valid."""
    try:
        options = tuple(sorted(spec.strategy_options.items()))
        return _cached_strategy(spec.strategy, spec.rank.r_max, options)
    except AggregationError as exc:
        raise InvalidRequest(f"strategy: {exc}") from exc


def strategy_for(job: JobLike) -> Strategy:
    return _cached_strategy(job.strategy, job.r_max, tuple(sorted(job.strategy_options.items())))


def spec_of(job: JobLike) -> JobSpec:
    return JobSpec.model_validate(job.spec)


def modules_of(spec: JobSpec) -> dict[str, tuple[int, int]]:
    return {name: (dims[0], dims[1]) for name, dims in spec.modules.items()}


def extra_of(spec: JobSpec) -> dict[str, tuple[int, ...]]:
    return {name: tuple(shape) for name, shape in spec.extra.items()}


def upload_spec(job: JobLike, rank: int) -> dict[str, tuple[int, ...]]:
    """The exact key -> shape map a client of ``rank`` must upload for ``job``."""
    spec = spec_of(job)
    return strategy_for(job).upload_spec(modules_of(spec), rank, extra_of(spec))


def upload_bytes(spec: JobSpec, rank: int) -> int:
    """Tensor bytes one client of ``rank`` uploads per round (F32; the safetensors header, a
    few hundred bytes, aside). ``spec`` must carry its layout (``with_derived_layout``)."""
    shapes = strategy_for_spec(spec).upload_spec(modules_of(spec), rank, extra_of(spec))
    return sum(math.prod(shape) for shape in shapes.values()) * ITEMSIZE[UPLOAD_DTYPE]


def client_scale(job: JobLike, rank: int) -> float:
    """The LoRA scale a client of ``rank`` trains at (VeRA has no alpha: scale 1)."""
    strategy = strategy_for(job)
    if strategy.adapter_type == "vera":
        return 1.0
    spec = spec_of(job)
    alpha = client_alpha(spec, rank)
    return lora_scale(rank, alpha, rslora=strategy.use_rslora)


def client_alpha(spec: JobSpec, rank: int) -> float:
    return spec.lora.lora_alpha * rank if spec.lora.alpha_per_rank else spec.lora.lora_alpha


def _exchanged(strategy: Strategy, spec: JobSpec, rank: int) -> tuple[set[str], set[str]]:
    modules, extra = modules_of(spec), extra_of(spec)
    shared: set[str] = {part_of(k) for k in strategy.upload_spec(modules, rank, extra)}
    private: set[str] = {part_of(k) for k in strategy.private_spec(modules, rank, extra)}
    return shared, private


def exchanged_parts(job: JobLike, rank: int) -> tuple[list[str], list[str]]:
    """(shared, private) parts for a client of ``rank``: what it uploads, and what never
    leaves its device."""
    shared, private = _exchanged(strategy_for(job), spec_of(job), rank)
    return sorted(shared), sorted(private)


def parts(job: JobLike, rank: int) -> tuple[list[str], list[str]]:
    """(shared, frozen) parts for a client: what it uploads, and what it must not train."""
    strategy, spec = strategy_for(job), spec_of(job)
    shared, private = _exchanged(strategy, spec, rank)
    every: set[str] = set(ADAPTER_PARTS[strategy.adapter_type])
    if spec.extra:
        every.add("extra")
    return sorted(shared), sorted(every - shared - private)


def sample_size(spec: JobSpec, eligible: int) -> int:
    """How many of ``eligible`` clients a round samples: max(minimum, ceil(fraction * n))."""
    wanted = max(spec.sampling.minimum, math.ceil(spec.sampling.fraction * eligible))
    return min(wanted, eligible)


def default_quorum(sampled: int, min_updates: int | None) -> int:
    if min_updates is not None:
        return min(sampled, min_updates)
    return max(1, math.ceil(sampled / 2))
