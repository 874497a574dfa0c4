"""Fixed TOPSIS reference points: every criterion scored against its theoretical bounds.

The cohort reference (TOPSIS's textbook ideal = the best client, anti-ideal = the worst, then
a min-max stretch of closeness onto [r_min, r_max]) always hands one client r_min and one r_max,
however alike the clients are. Here the ideal is a criterion's upper bound and the anti-ideal
its lower bound, the same for every cohort, so a client's closeness says how complex its data
is, not how it compares with whoever else enrolled (ALGORITHMS.md / docs/algorithms.md,
"AutoRank").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from server.autorank.errors import AutoRankError

DEFAULT_REFERENCE_SAMPLES = 10_000


@dataclass(frozen=True)
class Bound:
    """A criterion's theoretical range; ``log``: scored as ln(x / lo) / ln(hi / lo).

    Values outside [lo, hi] are clamped (the sample count saturates at ``hi``).
    """

    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise AutoRankError(f"a criterion's bounds need lo < hi, got [{self.lo}, {self.hi}]")
        if self.log and self.lo <= 0:
            raise AutoRankError(f"a log-scaled criterion needs lo > 0, got {self.lo}")


def criterion_bounds(
    criteria: Sequence[str], reference_samples: int = DEFAULT_REFERENCE_SAMPLES
) -> list[Bound]:
    """The bounds of the criteria the SDK uploads (client_sdk/profile.py), in ``criteria`` order.

    n_samples: [1, reference_samples] on a log scale (each doubling of the data is worth the
    same, up to the size where more data no longer asks for more capacity). label_entropy and
    loss_entropy are normalised by ln C and ln b on the device, so [0, 1]. gini_simpson is
    1 - sum q^2 in [0, 1 - 1/C]; the server does not know C, so [0, 1] [decision: at C = 10 a
    uniform client scores 0.9, not 1; every client is measured with the same ruler].
    """
    if reference_samples < 2:
        raise AutoRankError(f"reference_samples must be at least 2, got {reference_samples}")
    known = {
        "n_samples": Bound(1.0, float(reference_samples), log=True),
        "label_entropy": Bound(0.0, 1.0),
        "gini_simpson": Bound(0.0, 1.0),
        "loss_entropy": Bound(0.0, 1.0),
    }
    unknown = [c for c in criteria if c not in known]
    if unknown:
        raise AutoRankError(f"no bounds for criteria {unknown}; known: {', '.join(known)}")
    return [known[c] for c in criteria]


def to_unit(x: NDArray[np.float64], bounds: Sequence[Bound]) -> NDArray[np.float64]:
    """Each column mapped onto [0, 1] by its bounds (0 = anti-ideal, 1 = ideal)."""
    if x.shape[1] != len(bounds):
        raise AutoRankError(f"{x.shape[1]} criteria but {len(bounds)} bounds")
    u = np.empty_like(x)
    for j, b in enumerate(bounds):
        col = np.clip(x[:, j], b.lo, b.hi)
        if b.log:
            u[:, j] = np.log(col / b.lo) / math.log(b.hi / b.lo)
        else:
            u[:, j] = (col - b.lo) / (b.hi - b.lo)
    return np.clip(u, 0.0, 1.0)


def closeness_to_bounds(
    u: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """TOPSIS closeness with ideal = every criterion at its upper bound, anti-ideal = lower.

    In unit coordinates v = w * u, ideal v+ = w, anti-ideal v- = 0: D+ = ||w (1 - u)||,
    D- = ||w u||, C = D- / (D+ + D-). C rises with every criterion (monotone), does not depend
    on the other clients' values (only through the weights), and is 0.5 when all weights are 0.
    """
    d_plus = np.sqrt(((weights * (1.0 - u)) ** 2).sum(axis=1))
    d_minus = np.sqrt(((weights * u) ** 2).sum(axis=1))
    denom = d_plus + d_minus
    closeness = np.full(u.shape[0], 0.5)
    np.divide(d_minus, denom, out=closeness, where=denom > 0)
    return closeness
