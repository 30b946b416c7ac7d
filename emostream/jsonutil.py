"""Plain JSON values from what reports and results hold (numpy, paths, tuples, non-finite floats)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np


def json_ready(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays as Python values, paths as strings, dataclasses as dicts,
    and NaN/inf as null (strict JSON has no NaN); anything else unknown as its ``str``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_ready(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
