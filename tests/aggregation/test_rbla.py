"""RBLA identities, uncovered slices and scale folding (ALGORITHMS.md sanity identities)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.aggregation import ClientUpdate, get_strategy, lora_scale

MODS = {"base_model.model.fc1": (6, 5), "base_model.model.fc2": (5, 3)}


def lora(rank: int, n: int, seed: int, scale: float = 1.0, cid: str | None = None) -> ClientUpdate:
    """A random rank-``rank`` LoRA upload for MODS."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m, (d_in, d_out) in MODS.items():
        tensors[f"{m}.lora_A.weight"] = torch.randn(rank, d_in, generator=g)
        tensors[f"{m}.lora_B.weight"] = torch.randn(d_out, rank, generator=g)
    return ClientUpdate(tensors, n, scale=scale, client_id=cid or f"c{seed}")


def slice_of(t: torch.Tensor, key: str, i: int) -> torch.Tensor:
    return t[i] if "lora_A" in key else t[:, i]


ranks_and_sizes = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 4]), st.integers(1, 50)), min_size=1, max_size=5
)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_equal_ranks_is_fedavg(rank: int, sizes: list[int]) -> None:
    ups = [lora(rank, n, seed) for seed, n in enumerate(sizes)]
    out = get_strategy("rbla", r_max=rank).aggregate(ups)
    total = sum(sizes)
    for key in ups[0].tensors:
        expected = sum(u.num_samples * u.tensors[key] for u in ups) / total
        torch.testing.assert_close(out[key], expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(ranks_and_sizes)
def test_rbla_is_zeropad_divided_by_p_i(clients: list[tuple[int, int]]) -> None:
    ups = [lora(r, n, seed) for seed, (r, n) in enumerate(clients)]
    rbla = get_strategy("rbla", r_max=4, uncovered="zero").aggregate(ups)
    zp = get_strategy("zeropad", r_max=4, uncovered="zero").aggregate(ups)
    total = sum(n for _, n in clients)
    for i in range(4):
        p_i = sum(n for r, n in clients if r > i) / total
        for key in rbla:
            got, pad = slice_of(rbla[key], key, i), slice_of(zp[key], key, i)
            if p_i == 0:
                assert torch.all(got == 0) and torch.all(pad == 0)
            else:
                torch.testing.assert_close(got, pad / p_i, rtol=1e-5, atol=1e-5)


def test_one_client_returns_its_factors_on_its_slices() -> None:
    up = lora(3, 7, 0)
    out = get_strategy("rbla", r_max=5, uncovered="zero").aggregate([up])
    for key, t in up.tensors.items():
        assert out[key].shape == ((5, t.shape[1]) if "lora_A" in key else (t.shape[0], 5))
        own = out[key][:3] if "lora_A" in key else out[key][:, :3]
        torch.testing.assert_close(own, t)


@pytest.mark.parametrize("uncovered", ["keep", "zero"])
def test_uncovered_slices(uncovered: str) -> None:
    strategy = get_strategy("rbla", r_max=6, uncovered=uncovered)
    previous = strategy.initial_adapter(MODS, rank=6, seed=1)
    previous = {k: v + 0.5 for k, v in previous.items()}  # make B non-zero to see it kept
    out = strategy.aggregate([lora(2, 3, 0), lora(4, 5, 1)], previous)
    assert set(out) == set(previous)
    for key, prev in previous.items():
        tail = out[key][4:] if "lora_A" in key else out[key][:, 4:]
        prev_tail = prev[4:] if "lora_A" in key else prev[:, 4:]
        expected = prev_tail if uncovered == "keep" else torch.zeros_like(prev_tail)
        assert torch.equal(tail, expected)
        assert out[key].dtype == torch.float32 and out[key].is_contiguous()


def test_extras_are_a_plain_weighted_mean_and_bf16_accumulates_in_float32() -> None:
    a, b = lora(2, 1, 0), lora(4, 3, 1)
    a.tensors["classifier.weight"] = torch.ones(2, 3)
    b.tensors["classifier.weight"] = torch.full((2, 3), 5.0)
    b.tensors = {k: v.to(torch.bfloat16) for k, v in b.tensors.items()}
    out = get_strategy("rbla", r_max=4).aggregate([a, b])
    torch.testing.assert_close(out["classifier.weight"], torch.full((2, 3), 4.0))
    assert all(t.dtype == torch.float32 for t in out.values())


@pytest.mark.parametrize(
    ("rank", "scale"),
    [
        (8, lora_scale(8, 16.0)),  # fixed alpha
        (4, lora_scale(4, 8.0)),  # alpha = 2r
        (16, lora_scale(16, 32.0)),  # alpha = 2r
        (8, lora_scale(8, 16.0, rslora=True)),  # rsLoRA
    ],
)
@pytest.mark.parametrize("name", ["rbla", "zeropad", "fedit", "hetlora"])
def test_single_client_round_trip_through_the_fold(name: str, rank: int, scale: float) -> None:
    up = lora(rank, 9, 3, scale=scale)
    strategy = get_strategy(name, r_max=rank)
    back = strategy.distribute(strategy.aggregate([up]), rank, scale)
    assert set(back) == set(up.tensors)
    for key, t in up.tensors.items():
        torch.testing.assert_close(back[key], t, rtol=1e-5, atol=1e-6)


def test_heterogeneous_scales_are_folded_per_slice() -> None:
    s4, s16 = lora_scale(4, 16.0), lora_scale(16, 16.0, rslora=True)
    small, big = lora(4, 10, 0, scale=s4), lora(16, 30, 1, scale=s16)
    out = get_strategy("rbla", r_max=16).aggregate([small, big])
    for key in small.tensors:
        for i in range(16):
            parts = [(u, math.sqrt(u.scale)) for u in (small, big) if i < (4 if u is small else 16)]
            num = sum(u.num_samples * f * slice_of(u.tensors[key], key, i) for u, f in parts)
            den = sum(u.num_samples for u, _ in parts)
            torch.testing.assert_close(slice_of(out[key], key, i), num / den, rtol=1e-5, atol=1e-6)
    # dW of a lone client is preserved: s B A == B' A'
    alone = get_strategy("rbla", r_max=16).aggregate([big])
    m = "base_model.model.fc1"
    dw = big.scale * big.tensors[f"{m}.lora_B.weight"] @ big.tensors[f"{m}.lora_A.weight"]
    torch.testing.assert_close(alone[f"{m}.lora_B.weight"] @ alone[f"{m}.lora_A.weight"], dw)


def test_distribute_truncates_and_unfolds() -> None:
    strategy = get_strategy("rbla", r_max=8)
    g = strategy.aggregate([lora(8, 2, 0), lora(4, 2, 1)])
    sent = strategy.distribute(g, 4, 4.0)
    key = "base_model.model.fc1.lora_A.weight"
    torch.testing.assert_close(sent[key], g[key][:4] / 2.0)
    assert sent[key].is_contiguous() and sent[key].dtype == torch.float32
