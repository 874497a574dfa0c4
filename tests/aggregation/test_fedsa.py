"""FedSA-LoRA family: only A (or VeRA's lambda_d) is shared; B and the head stay private."""

from __future__ import annotations

import math

import pytest
import torch

from server.aggregation import AggregationError, ClientUpdate, get_strategy

MODS = {"base_model.model.lin0": (6, 4)}
A = "base_model.model.lin0.lora_A.weight"
B = "base_model.model.lin0.lora_B.weight"


class Untouchable(torch.Tensor):
    """A tensor that fails the test if its data is ever read."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.__name__ not in ("__get__", "shape", "dim", "size"):
            raise AssertionError(f"B was read via {func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


def a_only(rank: int, n: int, seed: int, scale: float = 1.0) -> ClientUpdate:
    g = torch.Generator().manual_seed(seed)
    return ClientUpdate({A: torch.randn(rank, 6, generator=g)}, n, scale, f"c{seed}")


@pytest.mark.parametrize("name", ["fedsa", "fedsa-rslora"])
def test_contract_uploads_a_keeps_b_and_head(name: str) -> None:
    s = get_strategy(name, r_max=8)
    extra = {"classifier.weight": (2, 4)}
    assert s.upload_spec(MODS, 4, extra) == {A: (4, 6)}
    assert s.private_spec(MODS, 4, extra) == {B: (4, 4), "classifier.weight": (2, 4)}
    assert not s.shares_extra and s.use_rslora == (name == "fedsa-rslora")


def test_the_shared_head_variant_shares_the_head_and_keeps_b() -> None:
    s = get_strategy("fedsa-shared-head", r_max=8)
    extra = {"classifier.weight": (2, 4)}
    assert s.upload_spec(MODS, 4, extra) == {A: (4, 6), "classifier.weight": (2, 4)}
    assert s.private_spec(MODS, 4, extra) == {B: (4, 4)}
    head = torch.ones(2, 4)
    ups = [
        ClientUpdate({A: torch.ones(4, 6) * k, "classifier.weight": head * k}, n, 1.0, f"c{k}")
        for k, n in ((1, 1), (3, 3))
    ]
    out = s.aggregate(ups)
    torch.testing.assert_close(out["classifier.weight"], head * 2.5)  # (1 * 1 + 3 * 3) / 4
    assert set(s.distribute(out, 4, 1.0)) == {A, "classifier.weight"}


def test_uploading_b_is_rejected_and_never_read() -> None:
    s = get_strategy("fedsa", r_max=4)
    b = torch.zeros(4, 4).as_subclass(Untouchable)
    up = ClientUpdate({A: torch.ones(4, 6), B: b}, 1, client_id="leaky")
    with pytest.raises(AggregationError, match=r"'leaky'.*lora_B.*must not be uploaded"):
        s.aggregate([up])


def test_b_is_never_returned_by_distribute_even_at_round_zero() -> None:
    s = get_strategy("fedsa", r_max=8)
    g0 = s.initial_adapter(MODS, rank=8, seed=3, extra={"classifier.weight": (2, 4)})
    assert torch.equal(g0[B], torch.zeros(4, 8))
    assert set(s.distribute(g0, 4, 1.0)) == {A}
    g1 = s.aggregate([a_only(4, 3, 0), a_only(8, 1, 1)], g0)
    assert set(g1) == {A}  # the round-0 B and head are not carried into later rounds
    assert set(s.distribute(g1, 8, 2.0)) == {A}
    g2 = s.aggregate([a_only(2, 5, 2)], g1)  # uncovered rows keep g1's, without any B
    torch.testing.assert_close(g2[A][2:], g1[A][2:])


def test_heterogeneous_ranks_average_rows_per_slice() -> None:
    small, big = a_only(2, 3, 0, scale=4.0), a_only(5, 1, 1, scale=1.0)
    out = get_strategy("fedsa", r_max=5).aggregate([small, big])
    rows = out[A]
    torch.testing.assert_close(rows[:2], (3 * 2.0 * small.tensors[A] + big.tensors[A][:2]) / 4)
    torch.testing.assert_close(rows[2:], big.tensors[A][2:])


def test_vera_shares_lambda_d_only() -> None:
    s = get_strategy("fedsa-vera", r_max=4)
    ld, lb = "base_model.model.lin0.vera_lambda_d", "base_model.model.lin0.vera_lambda_b"
    assert s.adapter_type == "vera"
    assert s.upload_spec(MODS, 4) == {ld: (4,)}
    assert s.private_spec(MODS, 4) == {lb: (4,)}
    g0 = s.initial_adapter(MODS, rank=4, seed=0)
    assert torch.allclose(g0[ld], torch.full((4,), 0.1)) and torch.equal(g0[lb], torch.zeros(4))
    ups = [
        ClientUpdate({ld: torch.tensor([1.0, 2.0])}, 1, client_id="a"),
        ClientUpdate({ld: torch.tensor([3.0, 4.0, 5.0, 6.0])}, 3, client_id="b"),
    ]
    out = s.aggregate(ups, g0)
    torch.testing.assert_close(out[ld], torch.tensor([2.5, 3.5, 5.0, 6.0]))
    assert set(out) == {ld}
    assert set(s.distribute(out, 2, 1.0)) == {ld}
    with pytest.raises(AggregationError, match="vera_lambda_b"):
        s.aggregate([ClientUpdate({ld: torch.ones(4), lb: torch.ones(4)}, 1, client_id="x")])


def test_round_zero_a_is_peft_like_and_deterministic() -> None:
    s = get_strategy("fedsa", r_max=8)
    mods = {"m.fc": (64, 32)}
    g, h = s.initial_adapter(mods, rank=8, seed=5), s.initial_adapter(mods, rank=8, seed=5)
    assert torch.equal(g["m.fc.lora_A.weight"], h["m.fc.lora_A.weight"])
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert g["m.fc.lora_A.weight"].abs().max() <= bound
    other = s.initial_adapter(mods, rank=8, seed=6)["m.fc.lora_A.weight"]
    assert not torch.equal(g["m.fc.lora_A.weight"], other)
