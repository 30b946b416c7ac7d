"""Latency percentiles, computed one way for the launcher's status, the sink's report and the bench."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: The percentiles every latency summary reports.
LATENCY_PERCENTILES = (50, 95, 99)


def percentiles(
    values: Iterable[float], ps: Sequence[float] = LATENCY_PERCENTILES, scale: float = 1.0
) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``values`` times ``scale`` (numpy's linear interpolation); NaN when empty."""
    data = np.asarray(list(values), dtype=np.float64) * scale
    if not data.size:
        return {f"p{p:g}": float("nan") for p in ps}
    return {f"p{p:g}": float(v) for p, v in zip(ps, np.percentile(data, list(ps)), strict=True)}
