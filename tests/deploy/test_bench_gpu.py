"""deploy/bench/gpu.py, the prepared CUDA run: its refusal without a device, and its dry run on the CPU on
real FER2013 faces (../shared), which runs every case that does not need CUDA end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.settings import SHIPPED_MODEL
from deploy.bench.gpu import EXIT_NO_DEVICE, batches_of, main
from support import shared_path
from training.data import load_dataset


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_dataset(shared_path("data", "fer2013", "fer2013.csv.gz"), splits=("PublicTest",), hash_file=False)
    path = tmp_path_factory.mktemp("gpu") / "crops.npy"
    np.save(path, data.splits["PublicTest"].images[:40, 0].numpy())
    return path


def test_batches_cycle_through_every_crop() -> None:
    crops = np.arange(10, dtype=np.uint8).reshape(10, 1, 1)
    batches = batches_of(crops, 4)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert set(np.concatenate(batches).ravel()) == set(range(10))
    assert [len(b) for b in batches_of(crops, 64)] == [64]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_cuda_device_it_says_so_and_exits_non_zero(crops: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--crops", str(crops)]) == EXIT_NO_DEVICE
    assert "no CUDA device" in capsys.readouterr().err


def test_the_dry_run_on_the_cpu_measures_and_checks_every_case_it_can(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--crops", str(crops), "--model", str(SHIPPED_MODEL), "--batch", "16", "--device", "cpu"]
    assert main([*args, "--cases", "served,graph,module", "--seconds", "0.05", "--json", str(out)]) == 0
    results = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert results["graph"]["skipped"] == "needs CUDA" and results["graph"]["faces_per_s"] is None
    served = results["served"]
    assert served["batch"] == 16 and served["faces_per_s"] > 0 and served["skipped"] == ""
    # The served step is the classifier's own (bf16 where the CPU has it): its top class is float32's.
    assert served["agreement"] >= 0.95
    assert results["module"]["faces_per_s"] > 0 and results["module"]["agreement"] is None


def test_a_run_past_its_time_lists_what_it_left(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--crops", str(crops), "--model", str(SHIPPED_MODEL), "--batch", "8", "--device", "cpu"]
    assert main([*args, "--cases", "served", "--max-seconds", "0", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["skipped"] == "out of time" and result["faces_per_s"] is None


def test_bad_crops_name_the_option(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 48, 48), dtype=np.float32))
    with pytest.raises(SystemExit) as exc:
        main(["--crops", str(bad), "--device", "cpu"])
    assert exc.value.code == 2
