"""FedSA-LoRA (Guo et al., ICLR 2025): share A, keep B (and the head) private.

Heterogeneous ranks [decision]: rows of A are averaged with the RBLA per-slice rule. The server
never receives B: an upload containing a lora_B is rejected, and ``distribute`` returns only A.
Only the round-0 adapter holds a B (zeros) and a head, the clients' common starting point; the
global adapters of later rounds hold A alone, since nothing on the server reads them again.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from server.aggregation.base import Strategy
from server.aggregation.keys import Part


class FedSA(Strategy):
    """FedSA-LoRA with the LoRA scale alpha / r."""

    name: ClassVar[str] = "fedsa"
    shares_extra: ClassVar[bool] = False
    shared_parts: ClassVar[tuple[Part, ...]] = ("lora_A",)
    private_parts: ClassVar[tuple[Part, ...]] = ("lora_B",)
    received_parts: ClassVar[tuple[Part, ...]] = ("lora_A",)


class FedSASharedHead(FedSA):
    """FedSA-LoRA with the shared non-LoRA tensors (a classifier head, ``modules_to_save``)
    averaged like under FedIT: only B stays on the device. It isolates the A/B asymmetry from
    the head policy when FedSA is compared with a strategy that shares the head."""

    name: ClassVar[str] = "fedsa-shared-head"
    shares_extra: ClassVar[bool] = True


class FedSARsLoRA(FedSA):
    """FedSA-LoRA with rsLoRA's scale alpha / sqrt(r); the protocol is identical."""

    name: ClassVar[str] = "fedsa-rslora"
    use_rslora: ClassVar[bool] = True


class FedSAVeRA(FedSA):
    """FedSA on peft VeRA: lambda_d (length r) is shared and averaged, lambda_b stays local.

    The frozen random projections are regenerated on the device from ``projection_prng_key``,
    so nothing else travels. Note that peft draws them per rank, so heterogeneous VeRA ranks
    share lambda_d slices that multiply different projections: prefer one rank per VeRA job.
    """

    name: ClassVar[str] = "fedsa-vera"
    adapter_type: ClassVar[Literal["lora", "vera"]] = "vera"
    shared_parts: ClassVar[tuple[Part, ...]] = ("vera_lambda_d",)
    private_parts: ClassVar[tuple[Part, ...]] = ("vera_lambda_b",)
    received_parts: ClassVar[tuple[Part, ...]] = ("vera_lambda_d",)
