"""``python -m training ensemble``: one model file whose logits (or weights) are its members' mean, calibrated as a
whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from emostream.modelfile import load_model, save_model
from emostream.modelinfo import ModelInfo
from emostream.wire import EMOTIONS
from support.models import tiny_bn_net
from support.training import run_in_process, synthetic_rows, write_csv


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)
    )


def member(tmp_path: Path, seed: int, **info: object) -> Path:
    path = tmp_path / f"member{seed}.pt2"
    fields = {"arch": f"small-{seed}", "class_names": list(EMOTIONS), "mean": 0.5, "std": 0.25, **info}
    save_model(small_net(seed), ModelInfo(**fields), path)  # type: ignore[arg-type]
    return path


def test_ensemble_logits_are_the_members_mean_and_it_is_calibrated(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "fer.csv", synthetic_rows())
    paths = [member(tmp_path, seed) for seed in (1, 2, 3)]
    out = tmp_path / "ensemble.pt2"
    code, result, _ = run_in_process(capsys, "ensemble", *map(str, paths), "--out", str(out), "--data", str(data))
    assert code == 0
    module, info = load_model(out)
    x = torch.randn(6, 1, 48, 48)
    with torch.no_grad():
        expected = torch.stack([load_model(p)[0](x) for p in paths]).mean(0)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    # Served as the classifier serves a .pt2 on a CPU with bf16 (classifier/runtimes.py TorchRuntime):
    # the members' bf16 logits are averaged into float32 logits.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        served = module(x)
    assert served.dtype == torch.float32
    torch.testing.assert_close(served, expected, rtol=0.05, atol=0.05)
    assert info.arch == "ensemble(small-1, small-2, small-3)"
    assert (info.class_names, info.mean, info.std) == (list(EMOTIONS), 0.5, 0.25)
    # Calibrated as a whole: its own temperatures, fitted on PublicTest, recorded with the members.
    assert info.temperature == pytest.approx(result["temperature"]) and info.temperature > 0
    assert info.tta_temperatures["flip"] == pytest.approx(result["tta_temperatures"]["flip"])
    assert [m["file"] for m in info.extra["members"]] == [p.name for p in paths]
    assert 0 <= info.metrics["PublicTest"]["accuracy"] <= 1 and info.metrics["PublicTest"]["n"] == 14 * 7


def test_members_that_differ_are_refused(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "fer.csv", synthetic_rows())
    a = member(tmp_path, 1)
    b = member(tmp_path, 2, mean=0.4)
    code, _, err = run_in_process(
        capsys, "ensemble", str(a), str(b), "--out", str(tmp_path / "e.pt2"), "--data", str(data)
    )
    assert code == 1 and "mean" in err and "member2.pt2" in err
    with pytest.raises(SystemExit) as exc:
        run_in_process(capsys, "ensemble", str(a), "--out", str(tmp_path / "e.pt2"), "--data", str(data))
    assert exc.value.code == 2


def normed_net(seed: int) -> nn.Module:
    """A net with BatchNorm whose running statistics differ from seed to seed, as trained ones do."""
    net = tiny_bn_net(seed, width=4)
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(seed * 10)
    return net.eval()


def test_weight_average_is_one_network_with_the_members_mean_parameters(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "fer.csv", synthetic_rows())
    nets = {seed: normed_net(seed) for seed in (1, 2)}
    paths = []
    for seed, net in nets.items():
        paths.append(tmp_path / f"finetune{seed}.pt2")
        save_model(net, ModelInfo(arch="normed", class_names=list(EMOTIONS), mean=0.5, std=0.25), paths[-1])
    out = tmp_path / "soup.pt2"
    code, result, _ = run_in_process(
        capsys, "ensemble", *map(str, paths), "--average", "weights", "--out", str(out), "--data", str(data)
    )
    assert code == 0 and result["average"] == "weights"
    # By hand: the mean of each floating-point tensor; integer buffers (batch counts) are the first member's.
    states = [net.state_dict() for net in nets.values()]
    by_hand = normed_net(1)
    by_hand.load_state_dict(
        {k: (states[0][k] + states[1][k]) / 2 if v.is_floating_point() else v for k, v in states[0].items()}
    )
    module, info = load_model(out)
    x = torch.randn(6, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(module(x), by_hand(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(module(x), torch.stack([net(x) for net in nets.values()]).mean(0), atol=1e-3)
    soup_state = module.state_dict()
    averaged = [k for k in soup_state if k.endswith(("running_mean", "running_var", "weight"))]
    assert averaged and all(torch.allclose(soup_state[k], by_hand.state_dict()[k]) for k in averaged)
    assert info.arch == "normed" and info.extra["average"] == "weights" and info.temperature > 0
    # A plain network, named layer for layer as its members: --init-from can start a fine-tune from it.
    by_hand.load_state_dict(soup_state, strict=True)


def test_a_weight_average_of_different_networks_is_refused(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "fer.csv", synthetic_rows())
    a, b = member(tmp_path, 1), member(tmp_path, 2)  # the same layers but different arch names
    out = tmp_path / "soup.pt2"
    code, _, err = run_in_process(
        capsys, "ensemble", str(a), str(b), "--average", "weights", "--out", str(out), "--data", str(data)
    )
    assert code == 1 and "member2.pt2 (small-2) is not the same network as" in err
