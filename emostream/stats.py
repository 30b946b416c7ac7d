"""Latency percentiles, computed one way for the launcher's status, the sink's report and the bench."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

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


class Reservoir:
    """A uniform random sample of at most ``capacity`` values out of every value added (Vitter's
    algorithm R): percentiles over a run of any length in bounded memory. Seeded, so a summary is
    reproducible for the same stream of values."""

    def __init__(self, capacity: int = 10_000, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.values: list[float] = []
        #: Values added so far, sampled or not.
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.capacity:
            self.values[slot] = value

    def __iter__(self) -> Iterator[float]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)
