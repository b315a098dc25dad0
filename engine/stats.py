"""Statistics shared by the offline eval (`unmaskd eval`) and the server's A/B report."""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sensible at small n and at 0% / 100%.
    `successes` may be fractional (summed scores); n = 0 gives the whole (0, 1)."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exactly 0 at no successes and 1 at all (rounding would leave 1e-17 off the bound)
    low = 0.0 if successes <= 0 else max(0.0, center - half)
    high = 1.0 if successes >= n else min(1.0, center + half)
    return low, high
