"""Bad batches, options and names raise AggregationError naming the client and the tensor."""

from __future__ import annotations

import pytest
import torch

from server.aggregation import AggregationError, ClientUpdate, available_strategies, get_strategy
from server.aggregation.packed import PackedTensors

A = "m.fc.lora_A.weight"
B = "m.fc.lora_B.weight"


def good(rank: int = 2, cid: str = "ok") -> dict[str, torch.Tensor]:
    return {A: torch.ones(rank, 3), B: torch.ones(4, rank)}


def test_registry_names_and_errors() -> None:
    assert available_strategies() == [
        "rbla", "rbla-shrink", "fedsa", "fedsa-shared-head", "fedsa-rslora", "fedsa-vera", "fedit",
        "ffa", "zeropad", "hetlora", "flexlora",
    ]  # fmt: skip
    with pytest.raises(AggregationError, match="unknown aggregation strategy 'nope'.*rbla"):
        get_strategy("nope")
    with pytest.raises(AggregationError, match="unknown option 'foo'.*uncovered"):
        get_strategy("rbla", foo=1)
    with pytest.raises(AggregationError, match="must be one of"):
        get_strategy("rbla", uncovered="maybe")
    with pytest.raises(AggregationError, match="r_max"):
        get_strategy("rbla", r_max=0)
    assert isinstance(AggregationError("x"), ValueError)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({A: torch.tensor([[float("nan")] * 3] * 2), B: torch.ones(4, 2)}, "NaN"),
        ({A: torch.ones(2, 3), B: torch.full((4, 2), float("inf"))}, "infinite"),
        ({A: torch.ones(2, 3)}, "lora_B.weight' is missing"),
        ({A: torch.ones(2, 3), B: torch.ones(4, 3)}, "one rank per client"),
        ({A: torch.ones(2, 3, 1), B: torch.ones(4, 2)}, "2-D"),
        ({A: torch.ones(2, 3, dtype=torch.int64), B: torch.ones(4, 2)}, "floating"),
        ({A: torch.ones(9, 3), B: torch.ones(4, 9)}, "exceeds the job's maximum rank"),
        ({A: torch.ones(2, 5), B: torch.ones(4, 2)}, "does not match"),
    ],
)
def test_bad_batches_name_client_and_tensor(tensors: dict[str, torch.Tensor], match: str) -> None:
    strategy = get_strategy("rbla", r_max=8)
    batch = [ClientUpdate(good(), 1, client_id="ok"), ClientUpdate(tensors, 1, client_id="bad")]
    with pytest.raises(AggregationError, match=match) as info:
        strategy.aggregate(batch)
    assert "'bad'" in str(info.value) and info.value.client_id == "bad"
    acc = strategy.accumulator()
    acc.add(batch[0])
    with pytest.raises(AggregationError, match=match):
        acc.add(batch[1])  # streaming applies the same rules, and leaves the sum untouched
    assert acc.num_updates == 1 and torch.isfinite(acc.result()[A]).all()


def test_batch_level_rules() -> None:
    rbla = get_strategy("rbla", r_max=4)
    with pytest.raises(AggregationError, match="no client updates"):
        rbla.aggregate([])
    with pytest.raises(AggregationError, match="appears twice"):
        rbla.aggregate([ClientUpdate(good(), 1, client_id="x")] * 2)
    with pytest.raises(AggregationError, match="needs equal ranks"):
        get_strategy("fedit", r_max=4).aggregate(
            [ClientUpdate(good(2), 1, client_id="a"), ClientUpdate(good(4), 1, client_id="b")]
        )
    with pytest.raises(AggregationError, match="extra.*missing|missing"):
        rbla.aggregate(
            [
                ClientUpdate({**good(), "head.weight": torch.ones(2)}, 1, client_id="a"),
                ClientUpdate(good(), 1, client_id="b"),
            ]
        )
    with pytest.raises(AggregationError, match="num_samples"):
        ClientUpdate(good(), 0, client_id="z")
    with pytest.raises(AggregationError, match="scale"):
        ClientUpdate(good(), 1, scale=float("nan"), client_id="z")
    previous = rbla.initial_adapter({"m.fc": (3, 4)}, rank=4, seed=0)
    with pytest.raises(AggregationError, match="rank 4 but r_max is 8"):
        get_strategy("rbla", r_max=8).accumulator(previous)


def test_specs_and_distribution_contract() -> None:
    mods = {"m.fc": (3, 4)}
    extra = {"head.weight": (2, 4), "head.bias": (2,)}
    rbla = get_strategy("rbla", r_max=8)
    assert rbla.upload_spec(mods, 2, extra) == {A: (2, 3), B: (4, 2), **extra}
    assert rbla.private_spec(mods, 2, extra) == {}
    ffa = get_strategy("ffa", r_max=8)
    assert ffa.upload_spec(mods, 8) == {B: (4, 8)}
    g0 = ffa.initial_adapter(mods, rank=8, seed=0, extra=extra)
    assert g0["head.weight"].abs().sum() > 0 and torch.equal(g0["head.bias"], torch.zeros(2))
    assert set(ffa.distribute(g0, 8, 1.0)) == {A, B, *extra}
    up = ClientUpdate({B: torch.ones(4, 8), **{k: torch.ones(v) for k, v in extra.items()}}, 1)
    g1 = ffa.aggregate([up], g0)  # A is not uploaded but received: it stays in the global
    assert set(ffa.distribute(g1, 8, 1.0)) == {A, B, *extra} and torch.equal(g1[A], g0[A])
    with pytest.raises(AggregationError, match="exceeds"):
        rbla.upload_spec(mods, 9)
    with pytest.raises(AggregationError, match="exceeds"):
        rbla.distribute(rbla.initial_adapter(mods, rank=4, seed=0), 6, 1.0)
    flags = {n: get_strategy(n, r_max=4).shares_extra for n in available_strategies()}
    assert [n for n, v in flags.items() if not v] == ["fedsa", "fedsa-rslora", "fedsa-vera"]


def test_unchecked_adds_still_never_publish_nan() -> None:
    strategy = get_strategy("rbla", r_max=4)
    acc = strategy.accumulator()
    acc.add(
        ClientUpdate({A: torch.full((2, 3), float("nan")), B: torch.ones(4, 2)}, 1),
        check_finite=False,
    )
    with pytest.raises(AggregationError, match="not finite"):
        acc.result()


def test_a_layout_accepted_before_is_still_checked_against_each_job() -> None:
    # Structural checks of a signature are cached across accumulators; the job's own rank
    # limit and layout, and the name of the client at fault, must not be.
    packed = PackedTensors(torch.ones(2 * 3 + 4 * 2), [(A, (2, 3)), (B, (4, 2))])
    assert get_strategy("rbla", r_max=4).aggregate([ClientUpdate(packed, 1, client_id="a")])
    with pytest.raises(AggregationError, match=r"'b'.*rank 2 exceeds.*r_max=1"):
        get_strategy("rbla", r_max=1).accumulator().add(ClientUpdate(packed, 1, client_id="b"))
    wider = {A: torch.ones(4, 5), B: torch.ones(4, 4)}
    acc = get_strategy("rbla", r_max=4).accumulator(wider)
    with pytest.raises(AggregationError, match=r"'c'.*lora_A.*does not match.*\(5,\)"):
        acc.add(ClientUpdate(packed, 1, client_id="c"))
    fedsa = get_strategy("fedsa", r_max=4).accumulator()
    with pytest.raises(AggregationError, match=r"'d'.*lora_B.*must not be uploaded"):
        fedsa.add(ClientUpdate(packed, 1, client_id="d"))
