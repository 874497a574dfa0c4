"""Packed updates (one flat buffer, one add) fold exactly like plain dicts; per-layout sums stay
within their memory budget and drain correctly."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.aggregation import AggregationError, ClientUpdate, available_strategies, get_strategy
from server.aggregation.base import Strategy
from server.aggregation.keys import classify
from server.aggregation.layout_sum import LayoutSum, _drain_plan
from server.aggregation.packed import PackedTensors, Signature
from server.aggregation.validation import signature_of
from tests.aggregation.test_streaming import SVD_FACTORED, close

MODS = {"base_model.model.q": (8, 6), "base_model.model.v": (8, 4)}
EXTRA = {"classifier.weight": (3, 8), "classifier.bias": (3,)}


def pack(tensors: dict[str, torch.Tensor], order: list[str]) -> PackedTensors:
    flat = torch.cat([tensors[k].reshape(-1) for k in order])
    return PackedTensors(flat, [(k, tensors[k].shape) for k in order])


@pytest.mark.parametrize("name", available_strategies())
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_packed_and_plain_updates_aggregate_alike(
    name: str, seed: int, data: st.DataObject
) -> None:
    """Random key orders (so shared extras interleave with LoRA keys: several weight runs),
    float16 and float32 buffers, packed and plain updates of one layout mixed in one round."""
    strategy = get_strategy(name, r_max=6)
    previous = strategy.initial_adapter(MODS, rank=6, seed=seed, extra=EXTRA)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    plain, mixed = [], []
    for i in range(6):
        rank = 4 if strategy.equal_ranks else rng.choice([2, 4, 6])
        spec = strategy.upload_spec(MODS, rank, EXTRA)
        dtype = data.draw(st.sampled_from([torch.float32, torch.float16]))
        tensors = {k: torch.randn(s, generator=g).to(dtype) for k, s in spec.items()}
        order = data.draw(st.permutations(sorted(tensors)))
        packed = pack(tensors, order)
        n, scale = rng.randint(1, 40), rng.choice([0.5, 1.0, 2.0])
        plain.append(ClientUpdate(tensors, n, scale, f"c{i}"))
        as_packed = data.draw(st.booleans())
        mixed.append(ClientUpdate(packed if as_packed else dict(packed), n, scale, f"c{i}"))
    acc = strategy.accumulator(previous)
    for up in mixed:
        acc.add(up)
    close(acc.result(), strategy.aggregate(plain, previous), svd=name in SVD_FACTORED)


def test_many_layouts_drain_within_the_budget_and_stay_exact() -> None:
    """Ranks 1..8 under r_max=8: the per-layout sums would hold 4.5 adapters, so the
    accumulator drains them into the numerators (at most 2 adapters held) along the way."""
    strategy = get_strategy("rbla", r_max=8, uncovered="zero")
    g = torch.Generator().manual_seed(0)
    ups = []
    for i, rank in enumerate([1, 2, 3, 4, 5, 6, 7, 8] * 2):
        spec = strategy.upload_spec(MODS, rank)
        tensors = {k: torch.randn(s, generator=g) for k, s in spec.items()}
        ups.append(ClientUpdate(pack(tensors, sorted(tensors)), i + 1, 1.0, f"c{i}"))
    acc = strategy.accumulator()
    full = sum(8 * (d_in + d_out) for d_in, d_out in MODS.values())
    for up in ups:
        acc.add(up)
        assert sum(s.numel for s in acc._sums.values()) <= 2 * full
    out = acc.result()
    for key in out:  # RBLA by hand: slice i averages the clients whose rank exceeds i
        dim = 1 if "lora_B" in key else 0
        for i in range(8):
            have = [u for u in ups if u.tensors[key].shape[dim] > i]
            num = sum(u.num_samples * u.tensors[key].select(dim, i) for u in have)
            expected = num / sum(u.num_samples for u in have)
            torch.testing.assert_close(out[key].select(dim, i), expected)


def test_packed_tensors_are_read_only_views_of_flat() -> None:
    flat = torch.arange(10, dtype=torch.float32)
    packed = PackedTensors(flat, [("a", (2, 3)), ("b", (4,))])
    assert packed["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and packed["b"].tolist() == [6, 7, 8, 9]
    flat[0] = 42  # values are shared ...
    assert packed["a"][0, 0] == 42
    for mutate in (
        lambda: packed.__setitem__("c", flat),
        lambda: packed.pop("a"),
        lambda: packed.update(c=flat),
        lambda: packed.clear(),
        lambda: packed.setdefault("c", flat),
        lambda: packed.popitem(),
    ):
        with pytest.raises(TypeError, match="read-only"):  # ... the key set is not
            mutate()
    with pytest.raises(TypeError, match="read-only"):
        del packed["a"]
    copy = pickle.loads(pickle.dumps(packed))
    assert type(copy) is dict and copy.keys() == packed.keys()


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([("a", (2, 3))], "cover 6 elements but flat has 10"),
        ([("a", (2, 3)), ("a", (4,))], "duplicate key 'a'"),
    ],
)
def test_packed_tensors_reject_a_layout_that_does_not_fit(
    shapes: list[tuple[str, tuple[int, ...]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PackedTensors(torch.zeros(10), shapes)


def test_equal_layouts_share_one_signature() -> None:
    """Two loads of one layout map to the same accepted layout and the same per-layout sum."""
    one = PackedTensors(torch.zeros(10), [("a", (2, 3)), ("b", (4,))])
    two = PackedTensors(torch.ones(10), [("a", (2, 3)), ("b", (4,))])
    assert one.signature is two.signature
    plain = signature_of(ClientUpdate(dict(one), 1))
    assert plain == one.signature and hash(plain) == hash(one.signature)


def test_a_packed_update_with_nan_is_refused_naming_the_tensor() -> None:
    strategy = get_strategy("rbla", r_max=2)
    spec = strategy.upload_spec(MODS, 2)
    tensors = {k: torch.ones(s) for k, s in spec.items()}
    tensors["base_model.model.v.lora_A.weight"][1, 2] = float("nan")
    update = ClientUpdate(pack(tensors, sorted(tensors)), 3, client_id="c1")
    with pytest.raises(AggregationError, match="NaN") as err:
        strategy.accumulator().add(update)
    assert err.value.tensor == "base_model.model.v.lora_A.weight"
    assert err.value.client_id == "c1"


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_strided_drain_puts_each_sum_where_the_per_key_drain_does(data: st.DataObject) -> None:
    """Any key order on either side, interleaved parts and extras, any r <= R."""
    mods = {
        f"m{i}": (data.draw(st.sampled_from([3, 5])), data.draw(st.sampled_from([2, 4])))
        for i in range(4)
    }
    rank, full_rank = sorted(data.draw(st.lists(st.integers(1, 5), min_size=2, max_size=2)))
    src, dst = (layout(mods, r, rng=data.draw(st.randoms())) for r in (rank, full_rank))
    expected = dst.buffer.clone()
    views = {
        k: expected.as_strided(v.shape, v.stride(), v.storage_offset())
        for k, v in dst.views.items()
    }
    src.drain_into(lambda key, part, shape: views[key])
    assert src.drain_into_sum(dst)
    assert torch.equal(dst.buffer, expected)


def test_strided_drain_of_a_uniform_adapter_is_one_add_per_part() -> None:
    mods = {f"layers.{i}.proj": (16, 16) for i in range(6)}
    for strategy, adds in ((get_strategy("rbla"), 2), (get_strategy("fedsa"), 1)):
        plan = _drain_plan(layout(mods, 4, strategy), layout(mods, 8, strategy))
        assert plan is not None and len(plan) == adds  # every A (and every B)
    assert not layout(mods, 4).drain_into_sum(layout({"other": (16, 16)}, 8))


def layout(
    mods: dict[str, tuple[int, int]],
    rank: int,
    strategy: Strategy | None = None,
    rng: random.Random | None = None,
) -> LayoutSum:
    """A layout sum of random values; keys in sorted order, or shuffled by ``rng`` (then with
    a shared extra tensor too)."""
    extra = {"head": (3,)} if rng is not None else {}
    spec = (strategy or get_strategy("rbla")).upload_spec(mods, rank, extra)
    order = sorted(spec)
    if rng is not None:
        rng.shuffle(order)
    signature = Signature((k, torch.Size(spec[k]), torch.float32) for k in order)
    sums = LayoutSum(signature, {k: classify(k)[0] for k in order}, rank)
    sums.buffer.copy_(torch.randn(sums.numel))
    return sums
