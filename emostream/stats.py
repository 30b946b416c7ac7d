"""Latency percentiles, computed one way for the launcher's status, the sink's report and the bench."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: The percentiles every latency summary reports.
LATENCY_PERCENTILES = (50, 95, 99)
#: Latency summaries (the launcher's final summary, ``sink.report``) leave out the events of each
#: camera's first seconds, counted from its first event: frames grabbed while downstream stages were
#: still loading (the model, the detector) waited for them and say nothing about the steady state.
WARMUP_S = 5.0


def percentiles(
    values: Iterable[float], ps: Sequence[float] = LATENCY_PERCENTILES, scale: float = 1.0
) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``values`` times ``scale`` (numpy's linear interpolation); NaN when empty."""
    data = np.asarray(list(values), dtype=np.float64) * scale
    if not data.size:
        return {f"p{p:g}": float("nan") for p in ps}
    return {f"p{p:g}": float(v) for p, v in zip(ps, np.percentile(data, list(ps)), strict=True)}
