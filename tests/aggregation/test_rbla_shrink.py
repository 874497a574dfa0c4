"""RBLA-shrink: the shrink rule, the strength order, and what a permutation must preserve."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.aggregation import get_strategy
from tests.aggregation.test_rbla import MODS, lora

R = 4
clients = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 4]), st.integers(1, 50)), min_size=1, max_size=5
)


def previous_adapter() -> dict[str, torch.Tensor]:
    prev = get_strategy("rbla-shrink", r_max=R).initial_adapter(MODS, rank=R, seed=3)
    return {k: v + 0.25 for k, v in prev.items()}  # a non-zero B, to see its share


def take(t: torch.Tensor, key: str, i: int) -> torch.Tensor:
    return t[i] if "lora_A" in key else t[:, i]


def shrink_rule(ups: list, prev: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rule written out slice by slice (unsorted)."""
    total = sum(u.num_samples for u in ups)
    out = {}
    for key, p in prev.items():
        res = p.clone()
        for i in range(R):
            have = [u for u in ups if u.tensors[key].shape[0 if "lora_A" in key else 1] > i]
            if not have:
                continue
            share = sum(u.num_samples for u in have) / total
            mean = sum(u.num_samples * take(u.tensors[key], key, i) for u in have) / total
            value = mean + (1 - share) * take(p, key, i)
            if "lora_A" in key:
                res[i] = value
            else:
                res[:, i] = value
        out[key] = res
    return out


def delta_w(adapter: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    return adapter[f"{module}.lora_B.weight"] @ adapter[f"{module}.lora_A.weight"]


@settings(max_examples=40, deadline=None)
@given(clients)
def test_the_rule_up_to_the_factoring(members: list[tuple[int, int]]) -> None:
    ups = [lora(r, n, seed) for seed, (r, n) in enumerate(members)]
    prev = previous_adapter()
    out = get_strategy("rbla-shrink", r_max=R).aggregate(ups, prev)
    expected = shrink_rule(ups, prev)
    for module in MODS:
        # The re-factoring keeps dW = B A.
        torch.testing.assert_close(delta_w(out, module), delta_w(expected, module))


@settings(max_examples=40, deadline=None)
@given(clients)
def test_balanced_orthogonal_factors_strongest_first(members: list[tuple[int, int]]) -> None:
    ups = [lora(r, n, seed) for seed, (r, n) in enumerate(members)]
    out = get_strategy("rbla-shrink", r_max=R).aggregate(ups, previous_adapter())
    for module in MODS:
        a, b = out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"]
        live = int((b.norm(dim=0) > 0).sum())  # slices with a direction come first
        assert torch.all(b[:, live:] == 0)
        gram_a, gram_b = a[:live] @ a[:live].T, b[:, :live].T @ b[:, :live]
        # Rows of A and columns of B are orthogonal, with equal norms sqrt(s_i)...
        torch.testing.assert_close(gram_a, torch.diag(gram_a.diagonal()), atol=1e-4, rtol=0)
        torch.testing.assert_close(gram_a.diagonal(), gram_b.diagonal(), atol=1e-4, rtol=1e-4)
        # ...and the strongest direction comes first: a rank-r client gets the best rank-r part.
        strength = gram_a.diagonal()
        assert torch.all(strength[:-1] >= strength[1:] - 1e-6)


def test_a_slice_without_a_direction_stays_trainable() -> None:
    """fc2 has d_out = 3 < R = 4: its fourth slice carries no direction. Its B column is zero
    and its A row is not (both zero would never get a gradient again)."""
    out = get_strategy("rbla-shrink", r_max=R).aggregate([lora(R, 5, 0)], previous_adapter())
    a, b = out["base_model.model.fc2.lora_A.weight"], out["base_model.model.fc2.lora_B.weight"]
    assert torch.all(b[:, 3] == 0) and a[3].norm() > 0
    assert torch.all(b[:, :3].norm(dim=0) > 0)


def test_equal_ranks_is_fedavg_of_the_factors_reordered() -> None:
    ups = [lora(R, n, seed) for seed, n in enumerate([3, 9, 4])]
    out = get_strategy("rbla-shrink", r_max=R).aggregate(ups, previous_adapter())
    fedavg = get_strategy("fedit", r_max=R).aggregate(ups)
    for module in MODS:
        torch.testing.assert_close(delta_w(out, module), delta_w(fedavg, module))


def test_a_slice_one_client_trains_moves_by_its_share_only() -> None:
    """The failure RBLA shows: one large client alone on the top slice gets its full weight
    there. Under the shrink the top slice moves by that client's share of the samples."""
    small, large = lora(1, 90, 0), lora(R, 10, 1)
    prev = previous_adapter()
    rbla = get_strategy("rbla", r_max=R).aggregate([small, large], prev)
    ours = shrink_rule([small, large], prev)
    key = "base_model.model.fc1.lora_A.weight"
    top_rbla, top_ours, top_prev = rbla[key][R - 1], ours[key][R - 1], prev[key][R - 1]
    torch.testing.assert_close(top_rbla, large.tensors[key][R - 1])
    torch.testing.assert_close(top_ours - top_prev, 0.1 * (top_rbla - top_prev))


def test_the_uncovered_option_is_not_offered() -> None:
    import pytest

    from server.aggregation import AggregationError

    with pytest.raises(AggregationError, match="unknown option 'uncovered'"):
        get_strategy("rbla-shrink", r_max=R, uncovered="zero")
