"""``python -m training served-crops`` on real FER2013 faces (../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from support import shared_path
from support.training import run_cli


def test_served_crops_cli_crops_real_faces_as_the_detector_does(tmp_path: Path) -> None:
    data = shared_path("data", "fer2013", "fer2013.csv.gz")
    out = tmp_path / "served.npz"
    proc = run_cli("served-crops", "--data", str(data), "--limit", "24", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as archive:
        crops, found, meta = archive["crops"], archive["found"], json.loads(str(archive["meta"]))
    assert crops.shape == (24, 48, 48) and crops.dtype == np.uint8
    assert meta["split"] == "Training" and meta["detector"]["align"] is True
    assert found.mean() >= 0.75  # YuNet finds most FER2013 faces placed at 64-240 px
    assert all(crops[i].std() > 5 for i in np.flatnonzero(found))  # a face, not a blank
    assert not crops[~found].any()
