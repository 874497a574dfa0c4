"""Streaming, merging and serialising accumulators equal the one-shot result, for every strategy."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from server.aggregation import (
    Accumulator,
    ClientUpdate,
    Strategy,
    available_strategies,
    get_strategy,
)

MODS = {"base_model.model.q": (8, 6), "base_model.model.v": (8, 4)}
EXTRA = {"classifier.weight": (3, 8), "classifier.bias": (3,)}
R = 6


def batch(strategy: Strategy, k: int, seed: int) -> list[ClientUpdate]:
    """k uploads that follow ``strategy.upload_spec`` exactly."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    equal = strategy.name in ("fedit", "ffa")
    ups = []
    for i in range(k):
        rank = 4 if equal else rng.choice([1, 2, 4, 6])
        spec = strategy.upload_spec(MODS, rank, EXTRA)
        tensors = {key: torch.randn(shape, generator=g) for key, shape in spec.items()}
        ups.append(ClientUpdate(tensors, rng.randint(1, 40), rng.choice([0.5, 1.0, 2.0]), f"c{i}"))
    return ups


#: Strategies whose global factors come from an SVD (FlexLoRA's truncation, RBLA-shrink's
#: re-factoring): defined only up to a sign per singular pair and a rotation among equal
#: singular values, so two sums that differ by rounding may give factors that differ by more.
SVD_FACTORED = frozenset({"flexlora", "rbla-shrink"})


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, svd: bool = False) -> None:
    """Equal global adapters. ``svd`` (a strategy in ``SVD_FACTORED``): compare each module's
    B A, the part of the aggregate the factors' signs do not change."""
    assert set(a) == set(b)
    for key in a:
        if svd and key.endswith(".lora_A.weight"):
            b_key = key.replace(".lora_A.", ".lora_B.")
            torch.testing.assert_close(a[b_key] @ a[key], b[b_key] @ b[key], rtol=1e-4, atol=1e-4)
        elif not (svd and key.endswith(".lora_B.weight")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", available_strategies())
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.data())
def test_stream_any_order_and_merge_any_partition(name: str, seed: int, cut: st.DataObject) -> None:
    strategy = get_strategy(name, r_max=R)
    previous = strategy.initial_adapter(MODS, rank=R, seed=seed, extra=EXTRA)
    ups = batch(strategy, 5, seed)
    expected = strategy.aggregate(ups, previous)
    private = {
        k
        for k in previous
        if "lora_B" in k or "lambda_b" in k or (k in EXTRA and not strategy.shares_extra)
    }
    assert set(expected) == set(previous) - (private if name.startswith("fedsa") else set())

    order = cut.draw(st.permutations(range(len(ups))))
    acc = strategy.accumulator(previous)
    for i in order:
        acc.add(ups[i])
    close(acc.result(), expected, svd=name in SVD_FACTORED)

    labels = cut.draw(st.lists(st.integers(0, 2), min_size=len(ups), max_size=len(ups)))
    parts: list[Accumulator] = [strategy.accumulator(previous) for _ in range(3)]
    for up, part in zip(ups, labels, strict=True):
        parts[part].add(up)
    # ship two partial aggregates through safetensors as another machine would
    shipped = [strategy.accumulator_from_state(load(save(p.state()))) for p in parts[1:]]
    main = parts[0]
    for other in shipped:
        main.merge(other)
    close(main.result(), expected, svd=name in SVD_FACTORED)
    assert main.num_updates == len(ups)
    assert main.total_samples == sum(u.num_samples for u in ups)


@pytest.mark.parametrize("name", available_strategies())
def test_state_is_safetensors_clean(name: str) -> None:
    strategy = get_strategy(name, r_max=R)
    acc = strategy.accumulator()
    for up in batch(strategy, 3, 1):
        acc.add(up)
    state = acc.state()
    assert all(
        t.dtype in (torch.float32, torch.int64) and t.is_contiguous() for t in state.values()
    )
    restored = strategy.accumulator_from_state(load(save(state)))
    close(restored.result(), acc.result(), svd=name in SVD_FACTORED)
    assert restored.coverage() == acc.coverage()


def test_coverage_counts_samples_per_slice() -> None:
    strategy = get_strategy("rbla", r_max=4)
    acc = strategy.accumulator()
    spec2, spec4 = strategy.upload_spec(MODS, 2), strategy.upload_spec(MODS, 4)
    acc.add(ClientUpdate({k: torch.ones(s) for k, s in spec2.items()}, 10, client_id="a"))
    acc.add(ClientUpdate({k: torch.ones(s) for k, s in spec4.items()}, 5, client_id="b"))
    assert acc.coverage() == [15.0, 15.0, 5.0, 5.0]
    assert acc.result()["base_model.model.q.lora_A.weight"].shape == (4, 8)


def test_without_r_max_the_rank_follows_the_data() -> None:
    strategy = get_strategy("rbla")
    spec2, spec5 = strategy.upload_spec(MODS, 2), strategy.upload_spec(MODS, 5)
    a = strategy.accumulator()
    a.add(ClientUpdate({k: torch.ones(s) for k, s in spec2.items()}, 1, client_id="a"))
    b = strategy.accumulator()
    b.add(ClientUpdate({k: torch.ones(s) * 3 for k, s in spec5.items()}, 1, client_id="b"))
    a.merge(b)
    out = a.result()
    assert out["base_model.model.q.lora_A.weight"].shape == (5, 8)
    assert out["base_model.model.q.lora_A.weight"][:2].eq(2).all()
    assert out["base_model.model.q.lora_A.weight"][2:].eq(3).all()


@pytest.mark.parametrize("name", ["rbla", "flexlora", "hetlora"])
def test_restored_accumulator_keeps_accepting_updates(name: str) -> None:
    strategy = get_strategy(name, r_max=R)
    ups = batch(strategy, 4, 7)
    first = strategy.accumulator()
    for up in ups[:2]:
        first.add(up)
    restored = strategy.accumulator_from_state(load(save(first.state())))
    for up in ups[2:]:
        restored.add(up)
    close(restored.result(), strategy.aggregate(ups))
