"""``python -m training calibrate --data D [--model M] [--output OUT | --in-place]``: temperature scaling.

Fits the softmax temperature of a model file on PublicTest logits (see
:func:`training.metrics.fit_temperature`), reports ECE and NLL before/after on PublicTest and
PrivateTest, and prints ONE JSON object on stdout. With ``--output``/``--in-place`` it writes the
model file with the new ``ModelInfo.temperature`` (and ``metrics["calibration"]``); the exported
program and its weights are copied unchanged (checked). With ``--report R.report.json`` the
calibration is merged into that training report and ``R.reliability_privatetest.png`` is drawn next
to it -- how the shipped ``classifier/models/emotion.*`` files are kept in step.

``--tta flip`` fits the temperature of the logits the classifier serves with ``classifier.tta: flip``
and stores it in ``ModelInfo.tta_temperatures["flip"]`` (``metrics["calibration_flip"]``, report key
``calibration_flip``, figure ``*_flip.png``); the single-pass temperature is left as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emostream.jsonutil import json_ready
from emostream.modelinfo import TTA_MODES
from training.cli_support import canonical_split, emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError
from training.inference import file_digest, load, predict_logits, rewrite_model_info
from training.metrics import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    plot_reliability,
    reliability_bins,
    softmax,
)

DESCRIPTION = "Fit a model file's softmax temperature on PublicTest; report ECE; optionally store it."


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser("calibrate", DESCRIPTION, data=True, model=True)
    p.add_argument("--fit-split", default="PublicTest", help="split the temperature is fitted on")
    p.add_argument("--eval-split", default="PrivateTest", help="held-out split the fitted temperature is checked on")
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins for ECE")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="fit the temperature of the logits served under this test-time augmentation (as the classifier's --tta)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output", default=None, help="write the calibrated model file here")
    where.add_argument("--in-place", action="store_true", help="rewrite --model with the fitted temperature")
    p.add_argument("--report", default=None, help="training report JSON to merge the calibration into")
    p.add_argument("--out", default=None, help="also write calibration.json and reliability PNGs here")
    return p


def calibration_summary(
    logits: dict[str, Any], labels: dict[str, Any], temperature: float, n_bins: int
) -> dict[str, dict[str, float]]:
    """Per split: n, accuracy, ECE and NLL with the raw softmax and with ``temperature``."""
    summary = {}
    for name in logits:
        z, y = logits[name], labels[name]
        summary[name] = {
            "n": int(len(y)),
            "accuracy": float((z.argmax(1) == y).mean()),
            "ece_raw": expected_calibration_error(softmax(z), y, n_bins),
            "ece_calibrated": expected_calibration_error(softmax(z, temperature), y, n_bins),
            "nll_raw": negative_log_likelihood(z, y),
            "nll_calibrated": negative_log_likelihood(z, y, temperature),
        }
    return summary


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    module, info, model_path = load(args.model)
    fit_split, eval_split = canonical_split(args.fit_split), canonical_split(args.eval_split)
    data = load_data(args, (fit_split, eval_split) if Path(args.data).is_file() else None)
    logits, labels = {}, {}
    for name in (fit_split, eval_split):
        if name not in data.splits or not len(data.splits[name]):
            raise DataError(f"{data.path} has no {name} images")
        images = data.splits[name].images
        logits[name] = predict_logits(module, info, images, args.batch_size, args.tta).astype("float64")
        labels[name] = data.splits[name].labels.numpy()
    temperature = fit_temperature(logits[fit_split], labels[fit_split])
    summary = calibration_summary(logits, labels, temperature, args.bins)
    previous = info.temperature_for(args.tta)
    calibration = {
        "temperature": temperature,
        "previous_temperature": previous,
        "tta": args.tta,
        "fit_split": fit_split,
        "n_bins": args.bins,
        "labels": data.labels,
        "data_sha256": data.sha256,
        **summary,
    }
    log(
        f"temperature {temperature:.4f} (was {previous:g}) for tta {args.tta}, fit on {fit_split}; ECE "
        + ", ".join(f"{n} {s['ece_raw']:.4f} -> {s['ece_calibrated']:.4f}" for n, s in summary.items())
    )
    result: dict[str, Any] = {"model": str(model_path), "calibration": calibration, "written": []}

    # Single-pass calibration keeps its historical key; each TTA mode gets its own.
    key = "calibration" if args.tta == "none" else f"calibration_{args.tta}"
    target = model_path if args.in_place else (Path(args.output) if args.output else None)
    if target is not None:
        metrics = {**info.metrics, key: json_ready(calibration)}
        if args.tta == "none":
            new_info = dataclasses.replace(info, temperature=temperature, metrics=metrics)
        else:
            temps = {**info.tta_temperatures, args.tta: temperature}
            new_info = dataclasses.replace(info, tta_temperatures=temps, metrics=metrics)
        rewrite_model_info(model_path, new_info, target)
        result["written"].append(str(target))
        result["model_sha256"] = file_digest(target)
        log(f"wrote {target} (temperature {temperature:.4f}, weights unchanged)")

    curves = {
        f"raw (ECE {summary[eval_split]['ece_raw']:.3f})": reliability_bins(
            softmax(logits[eval_split]), labels[eval_split], args.bins
        ),
        f"T={temperature:.2f} (ECE {summary[eval_split]['ece_calibrated']:.3f})": reliability_bins(
            softmax(logits[eval_split], temperature), labels[eval_split], args.bins
        ),
    }
    served = info.arch if args.tta == "none" else f"{info.arch}, {args.tta} TTA"
    title = f"{eval_split} ({served}), temperature fit on {fit_split}"
    suffix = "" if args.tta == "none" else f"_{args.tta}"
    if args.report:
        report_path = Path(args.report)
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        report[key] = calibration
        report_path.write_text(json.dumps(json_ready(report), indent=1))
        stem = report_path.name.removesuffix(".json").removesuffix(".report")
        figure = report_path.with_name(f"{stem}.reliability_{eval_split.lower()}{suffix}.png")
        plot_reliability(curves, figure, title)
        result["written"] += [str(report_path), str(figure)]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figure = out / f"reliability_{eval_split.lower()}{suffix}.png"
        plot_reliability(curves, figure, title)
        result["written"] += [str(figure), str(out / "calibration.json")]
        emit(result, out / "calibration.json")
    else:
        emit(result)
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, calibrate, argv)
