"""``python -m training ensemble M1 M2 ... --out F --data D [--average logits|weights]``: several model
files as one model file.

``--average logits`` (the default): the ensemble's forward pass averages its members' logits, at the
cost of all of them. ``--average weights``: one network whose parameters and BatchNorm statistics are
the members' mean (a "model soup"; with a model and its own fine-tune, WiSE-FT), at the cost of one;
the members must then be the same architecture, tensor for tensor, as fine-tunes of one model are.
Either way the classifier, ``evaluate`` and ``export`` serve and score the result like any model file.
It is calibrated as a whole: its own temperature (and flip TTA's) is fitted on the PublicTest logits of
its output; PrivateTest is not touched here (``python -m training evaluate --model F`` reports it,
once). The members must take the same input (size, normalisation) and name the same classes in the
same order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emostream.jsonutil import json_ready
from emostream.modelfile import save_model
from emostream.modelinfo import ModelFileError, ModelInfo
from training.cli_support import emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError
from training.inference import file_digest, load, predict_logits
from training.metrics import classification_metrics, fit_temperature

FIT_SPLIT = "PublicTest"
AVERAGES = ("logits", "weights")


class LogitEnsemble(nn.Module):
    """The mean of its members' logits."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def train(self, mode: bool = True) -> LogitEnsemble:
        # Members loaded from model files are exported eval-mode graphs that refuse train()/eval();
        # an ensemble only ever runs in eval mode, so the switch stops here.
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Summed in float32 by the sum's own dtype, not by casting each member's logits: an exported
        # graph keeps a cast traced on float32 as a check that its input is float32, which then fails
        # under bf16 autocast (a .pt2 served with bf16).
        return torch.stack([member(x) for member in self.members]).sum(0, dtype=torch.float32) / len(self.members)


def check_compatible(infos: Sequence[ModelInfo], paths: Sequence[Path]) -> None:
    """ModelFileError naming the first member whose input or classes differ from the first one's."""
    first = infos[0]
    for info, path in zip(infos[1:], paths[1:], strict=True):
        for field in ("class_names", "input_size", "mean", "std"):
            if getattr(info, field) != getattr(first, field):
                raise ModelFileError(
                    f"{path}: {field} {getattr(info, field)!r} differs from {paths[0]}'s {getattr(first, field)!r}"
                )


def average_weights(members: Sequence[nn.Module], infos: Sequence[ModelInfo], paths: Sequence[Path]) -> nn.Module:
    """The first member with every floating-point parameter and buffer replaced by the members' mean (integer
    buffers, BatchNorm's batch counts, stay the first's); ModelFileError unless all share one architecture."""
    states = [member.state_dict() for member in members]
    for info, state, path in zip(infos[1:], states[1:], paths[1:], strict=True):
        if info.arch != infos[0].arch or state.keys() != states[0].keys():
            raise ModelFileError(f"{path} ({info.arch}) is not the same network as {paths[0]} ({infos[0].arch})")
        for name, tensor in state.items():
            if tensor.shape != states[0][name].shape:
                raise ModelFileError(
                    f"{path}: {name} is {tuple(tensor.shape)}, {tuple(states[0][name].shape)} in {paths[0]}"
                )
    mean = {
        name: torch.stack([state[name] for state in states]).mean(0) if tensor.is_floating_point() else tensor
        for name, tensor in states[0].items()
    }
    members[0].load_state_dict(mean, strict=True)
    return members[0]


def build_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    paths = [Path(p) for p in args.models]
    loaded = [load(p) for p in paths]
    infos = [info for _, info, _ in loaded]
    check_compatible(infos, paths)
    modules = [module for module, _, _ in loaded]
    ensemble = LogitEnsemble(modules) if args.average == "logits" else average_weights(modules, infos, paths)
    first = infos[0]
    data = load_data(args, (FIT_SPLIT,) if Path(args.data).is_file() else None)
    if FIT_SPLIT not in data.splits or not len(data.splits[FIT_SPLIT]):
        raise DataError(f"{data.path} has no {FIT_SPLIT} images to calibrate the ensemble on")
    split = data.splits[FIT_SPLIT]
    labels = split.labels.numpy()
    fitted: dict[str, float] = {}
    scores: dict[str, dict[str, Any]] = {}
    for tta in ("none", "flip"):
        logits = predict_logits(ensemble, first, split.images, args.batch_size, tta).astype("float64")
        fitted[tta] = fit_temperature(logits, labels)
        metrics = classification_metrics(labels, logits.argmax(1), first.class_names)
        scores[tta] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}
        log(
            f"{args.average} average of {len(paths)}, tta {tta}: {FIT_SPLIT} acc {metrics['accuracy']:.4f} "
            f"macro-F1 {metrics['macro_f1']:.4f}, temperature {fitted[tta]:.3f}"
        )
    members = [
        {"file": path.name, "sha256": file_digest(path), "arch": info.arch, "metrics": info.metrics.get(FIT_SPLIT)}
        for path, info in zip(paths, infos, strict=True)
    ]
    info = ModelInfo(
        arch=f"ensemble({', '.join(i.arch for i in infos)})" if args.average == "logits" else first.arch,
        class_names=list(first.class_names),
        input_size=first.input_size,
        mean=first.mean,
        std=first.std,
        temperature=fitted["none"],
        tta_temperatures={"flip": fitted["flip"]},
        data_sha256=data.sha256,
        metrics={FIT_SPLIT: scores["none"], "tta_flip": {FIT_SPLIT: scores["flip"]}, "fit_split": FIT_SPLIT},
        extra={"members": json_ready(members), "average": args.average, "labels": data.labels},
    )
    out = save_model(ensemble, info, args.out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return {
        "model": str(out),
        "model_sha256": file_digest(out),
        "average": args.average,
        "members": members,
        "temperature": fitted["none"],
        "tta_temperatures": {"flip": fitted["flip"]},
        FIT_SPLIT: scores["none"],
        "tta_flip": {FIT_SPLIT: scores["flip"]},
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "ensemble",
        "Average several model files' logits (or weights) in one model file, calibrated on PublicTest.",
        data=True,
    )
    p.add_argument("models", nargs="+", help="member model files (.pt2), at least two")
    p.add_argument(
        "--average",
        choices=AVERAGES,
        default="logits",
        help="logits: a forward pass through every member, their logits averaged; weights: one network with the "
        "members' mean parameters (the same architecture each: fine-tunes of one model)",
    )
    p.add_argument("--out", required=True, help="the ensemble's model file (.pt2)")
    p.add_argument("--batch-size", type=int, default=256)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("an ensemble needs at least two model files")
    if not str(args.out).endswith(".pt2"):
        parser.error(f"--out {args.out}: a model file name ends in .pt2")
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = build_ensemble(args)
    emit(result)
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(parse_args, main, argv)
