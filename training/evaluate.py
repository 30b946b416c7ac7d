"""``python -m training evaluate --data D [--model M] [--split S] [--out DIR]``: metrics of a model file.

Loads the model file with torch alone (:func:`emostream.modelfile.load_model`; default: the shipped
``classifier/models/emotion.pt2``) or, for an ``.onnx`` export (float32 or int8, ``python -m training
export``), with onnxruntime or OpenVINO (``--engine``) on the CPU (``--threads`` threads), runs one split
in float32 and prints ONE
JSON object on stdout:
accuracy, per-class precision/recall/F1/ROC-AUC, macro and weighted averages, confusion matrix,
one-vs-rest ROC-AUC, ECE and NLL raw and with the model's temperature for the TTA mode. Logs go to stderr.
``--tta flip`` evaluates the model as the classifier serves it with ``classifier.tta: flip``.
With ``--out``: the same JSON as ``evaluation.json`` plus ``confusion_<split>.png``,
``reliability_<split>.png`` and, when the model file carries its training history,
``training_curves.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emostream.cpu import thread_budget
from emostream.modelinfo import TTA_MODES
from emostream.onnxmodel import ENGINES, is_onnx, load_onnx_model
from training.cli_support import canonical_split, emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError, Fer2013
from training.inference import file_digest, load, predict_logits, shipped_model_path
from training.metrics import (
    evaluation_report,
    plot_confusion,
    plot_reliability,
    plot_training_curves,
    reliability_bins,
    softmax,
)

DEFAULT_SPLIT = "PrivateTest"

DESCRIPTION = "Evaluate an emostream model file on a data split; prints one JSON object on stdout."


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser("evaluate", DESCRIPTION, data=True, model=True)
    p.add_argument(
        "--split",
        default=None,
        help=f"split to evaluate (Training, PublicTest, PrivateTest, folder aliases such as test, or 'all' for "
        f"a flat image folder); None = {DEFAULT_SPLIT}, or the only split of a flat folder",
    )
    p.add_argument("--out", default=None, help="also write evaluation.json and figures here")
    p.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation, as the classifier's --tta: flip = mean of the face's and its mirror's logits",
    )
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins for ECE")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: the usable CPUs, affinity and cgroup quota)"
    )
    p.add_argument(
        "--engine",
        default="onnxruntime",
        choices=list(ENGINES),
        help="what runs an .onnx model file (as classifier.runtime); a .pt2 runs on torch",
    )
    return p


def pick_split(data: Fer2013, requested: str | None) -> str:
    """The requested split (canonical name), else PrivateTest, else the only non-empty split."""
    available = [name for name, split in data.splits.items() if len(split)]
    if requested is not None:
        name = canonical_split(requested)
        if name not in data.splits or not len(data.splits[name]):
            raise DataError(f"split {requested!r} is empty or absent in {data.path}; it has {available}")
        return name
    if DEFAULT_SPLIT in available:
        return DEFAULT_SPLIT
    if len(available) == 1:
        return available[0]
    raise DataError(f"{data.path} has splits {available}; choose one with --split")


def history_from(info_extra: dict[str, Any], info_metrics: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per-epoch training history if the model file carries it (train.py stores it in extra)."""
    history = info_extra.get("history") or info_metrics.get("history")
    return history if isinstance(history, list) and history else None


def evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(thread_budget(args.threads))
    model_path = Path(args.model) if args.model else shipped_model_path()
    engine = args.engine if is_onnx(model_path) else "torch"
    if engine == "torch":
        module, info, _ = load(model_path)
    else:
        module, info = load_onnx_model(model_path, torch.get_num_threads(), engine)
    temperature = info.temperature_for(args.tta)  # the one the classifier serves with this recipe
    log(f"model: {model_path} ({info.arch} on {engine}, tta {args.tta}, temperature {temperature:g})")
    # A CSV parses only the rows of the requested split; a folder is read whole (split names vary).
    wanted = (canonical_split(args.split or DEFAULT_SPLIT),) if Path(args.data).is_file() else None
    t0 = time.perf_counter()
    data = load_data(args, wanted)
    split_name = pick_split(data, args.split)
    split = data.splits[split_name]
    log(
        f"data: {data.path} ({data.layout}, labels {data.labels}) {split_name}: {len(split)} images "
        f"({time.perf_counter() - t0:.1f}s), skipped {data.skipped_rows}, dropped {sum(data.dropped.values())}"
    )
    t0 = time.perf_counter()
    logits = predict_logits(module, info, split.images, args.batch_size, args.tta)
    log(f"inference: {len(split)} images in {time.perf_counter() - t0:.1f}s")
    labels = split.labels.numpy()
    metrics = evaluation_report(labels, logits, info.class_names, temperature, args.bins)
    result: dict[str, Any] = {
        "model": {
            "path": str(model_path),
            "sha256": file_digest(model_path),
            "arch": info.arch,
            "engine": engine,
            "temperature": temperature,
            "tta": args.tta,
        },
        "data": {**data.summary(), "split": split_name},
        "split": split_name,
        **metrics,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        files = write_figures(out, split_name, metrics, logits, labels, info, args.bins, args.tta)
        result["files"] = files
        emit(result, out / "evaluation.json")
    else:
        emit(result)
    log(
        f"{split_name}: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} "
        f"ECE raw {metrics['ece']['raw']:.4f} calibrated {metrics['ece']['calibrated']:.4f}"
    )
    return result


def write_figures(
    out: Path,
    split_name: str,
    metrics: dict[str, Any],
    logits: Any,
    labels: Any,
    info: Any,
    n_bins: int,
    tta: str = "none",
) -> list[str]:
    tag = split_name.lower()
    model = info.arch if tta == "none" else f"{info.arch}, {tta} TTA"
    confusion = out / f"confusion_{tag}.png"
    plot_confusion(
        metrics["confusion_matrix"],
        info.class_names,
        confusion,
        f"{split_name} ({model}): acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
    )
    curves = {f"raw (ECE {metrics['ece']['raw']:.3f})": reliability_bins(softmax(logits), labels, n_bins)}
    temperature = info.temperature_for(tta)
    if temperature != 1.0:
        label = f"T={temperature:.2f} (ECE {metrics['ece']['calibrated']:.3f})"
        curves[label] = reliability_bins(softmax(logits, temperature), labels, n_bins)
    reliability = out / f"reliability_{tag}.png"
    plot_reliability(curves, reliability, f"{split_name} ({model})")
    files = [confusion.name, reliability.name]
    history = history_from(info.extra, info.metrics)
    if history is not None:
        plot_training_curves(history, out / "training_curves.png")
        files.append("training_curves.png")
    else:
        log("no training history in the model file: training_curves.png not written")
    return files


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, evaluate_model, argv)
