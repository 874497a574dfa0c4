"""FlexLoRA redistributes the best rank-r approximation of the averaged dense update."""

from __future__ import annotations

import torch

from server.aggregation import ClientUpdate, get_strategy, lora_scale

M = "base_model.model.fc"


def up(rank: int, n: int, seed: int) -> ClientUpdate:
    g = torch.Generator().manual_seed(seed)
    t = {
        f"{M}.lora_A.weight": torch.randn(rank, 12, generator=g),
        f"{M}.lora_B.weight": torch.randn(10, rank, generator=g),
    }
    return ClientUpdate(t, n, lora_scale(rank, 2.0 * rank), f"c{seed}")


def test_redistributed_factors_are_the_best_rank_r_approximation() -> None:
    ups = [up(2, 5, 0), up(4, 1, 1), up(8, 3, 2)]
    total = sum(u.num_samples for u in ups)
    dw = sum(
        u.num_samples * u.scale * u.tensors[f"{M}.lora_B.weight"] @ u.tensors[f"{M}.lora_A.weight"]
        for u in ups
    )
    dw = dw / total
    strategy = get_strategy("flexlora", r_max=8)
    g = strategy.aggregate(ups)
    assert g[f"{M}.lora_A.weight"].shape == (8, 12)
    u_, s_, vh = torch.linalg.svd(dw.double())
    for rank in (1, 3, 8):
        scale = lora_scale(rank, 2.0 * rank)
        got = strategy.distribute(g, rank, scale)
        approx = scale * got[f"{M}.lora_B.weight"] @ got[f"{M}.lora_A.weight"]
        best = (u_[:, :rank] * s_[:rank]) @ vh[:rank]
        torch.testing.assert_close(approx.double(), best, rtol=1e-4, atol=1e-4)
