"""``python -m training export --model M [--quantize int8 --data D] [--out DIR | --onnx OUT.onnx]``: ONNX export
with a parity check; float32 by default, int8 with ``--quantize int8``.

The model file's ``torch.export`` program is handed as is to ``torch.onnx.export(..., dynamo=True)``
(the exporter built on torch.export; it needs ``onnxscript``), so the ONNX graph is translated from
the very graph the classifier serves and keeps its dynamic batch dimension. The ``emostream.json``
ModelInfo (class names, mean/std, temperature) is copied into the ONNX ``metadata_props`` so the
file stays self-describing (:mod:`emostream.onnxmodel`), with ``extra["export"]`` naming the source
file and its sha256 (the classifier serves an int8 file beside a ``.pt2`` only when it was made from
that very file). Input ``input`` float32 (N, 1, 48, 48), normalised as in the model file; output
``logits`` (N, classes).

Where: ``--onnx PATH``, else ``--out DIR`` (default ``runs/export``) ``/<model stem>.onnx`` or
``.int8.onnx``; never beside the model unless asked. The classifier looks for ``<stem>.int8.onnx``
beside the ``.pt2`` it is given, so ship one with ``--out classifier/models``.

int8 (``--quantize int8``, needs ``--data``): static QDQ quantisation with onnxruntime.quantization,
calibrated on ``--calibration-size`` real faces drawn (seeded) from the **Training** split and
preprocessed as served. uint8 activations; per-channel weights; the first convolution (one input
channel, little compute) and the final linear layer (its logits decide the class) stay float32. Three
weight schemes (``--weight-schemes``; the first two are the default candidates, both on the fast kernel):
``s8``, symmetric full-range int8; ``s8-7bit``, the same with ``reduce_range`` (7 bits); and ``u8``,
full-range uint8 weights (close to float32, but a much slower kernel). Why 7 bits exist: without
VNNI, x86 multiplies uint8 activations by int8 weights with ``vpmaddubsw``, whose int16 pair sums
saturate when two neighbouring inputs and their weights are all large -- the stem's neighbouring
pixels were (docs/model.md), so the stem stays float32, and the export measures the rest on the CPU it
runs on: a scheme that saturates there loses the agreement vote below. (CPUs with VNNI or AMX add in
int32 and never saturate.) Every scheme asked for is tried with every method of
``--calibration-methods`` (MinMax, Entropy, Percentile), and the candidate whose **PublicTest** argmax
agrees best with the float model's is kept (``--choose-by agreement``: the int8 file stands in for the
float model; ``accuracy`` picks on PublicTest accuracy instead; PrivateTest is never used to choose).
The export fails (status 1) when the kept candidate's accuracy falls more than ``--max-accuracy-drop``
points below the float model's; its file is then written as ``<stem>.int8.failed.onnx``, a name the
classifier never serves, and a ``<stem>.int8.onnx`` already there is left as it was. Figures: docs/model.md.

Near ties: the faces whose top class int8 changes are those whose top two logits are closer than its
rounding can separate. The export records in the int8 file the smallest top-two gap of the int8 logits
under which re-scoring in float32 brings PublicTest agreement to ``--near-tie-agreement`` (a few percent
of the faces); the classifier re-scores such faces with the ``.pt2`` (``classifier/model.py``).

Parity: onnxruntime (CPU) and torch run the same preprocessed inputs -- seeded random uint8 crops,
or real images with ``--data`` -- at several batch sizes (checks the dynamic batch too); float32
passes when every logit satisfies ``|onnx - torch| <= atol + rtol * |torch|`` (numpy.allclose); int8
reports the argmax agreement and the logit differences. The result is printed as ONE JSON object on
stdout; the exit status is 1 when parity fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emostream.modelinfo import INFO_FILE, ModelInfo
from emostream.onnxmodel import INPUT_NAME, OUTPUT_NAME, OnnxModule, set_onnx_info
from training.cli_support import canonical_split, emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError
from training.inference import file_digest, load, predict_logits, preprocess

QUANTIZE_MODES = ("none", "int8")
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
#: Weight scheme -> (uint8 weights?, reduce_range): see the module docstring.
WEIGHT_SCHEMES = {"s8": (False, False), "s8-7bit": (False, True), "u8": (True, False)}
DEFAULT_WEIGHT_SCHEMES = ("s8", "s8-7bit")
CHOOSE_BY = ("agreement", "accuracy")
DEFAULT_OUT = "runs/export"
#: Near-tie re-scoring (``--near-tie-agreement``): the gaps tried, in logits, and the largest.
NEAR_TIE_STEP, NEAR_TIE_MAX = 0.005, 0.5
#: Faces per calibration batch: every batch the same size (onnxruntime's histogram calibrators stack them).
CALIBRATION_BATCH = 64


def export_onnx(model_path: Path, info: ModelInfo, onnx_path: Path, opset: int) -> Path:
    """Translate the model file's exported program to ONNX at ``onnx_path`` (weights inside the file)."""
    import onnx

    program = torch.export.load(model_path, extra_files={INFO_FILE: ""})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter prints progress on stdout; keep stdout for the one JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            program,
            f=str(onnx_path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    proto = onnx.load(str(onnx_path))
    set_onnx_info(proto, info)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return onnx_path


def exported_info(info: ModelInfo, model_path: Path, **details: Any) -> ModelInfo:
    """``info`` with ``extra["export"]``: the source file, its sha256 and ``details`` (how it was made)."""
    source = {"source": model_path.name, "source_sha256": file_digest(model_path), **details}
    return dataclasses.replace(info, extra={**info.extra, "export": source})


def write_info(onnx_path: Path, info: ModelInfo) -> None:
    import onnx

    proto = onnx.load(str(onnx_path))
    set_onnx_info(proto, info)
    onnx.save(proto, str(onnx_path))


class _Batches:
    """onnxruntime's CalibrationDataReader over equal-size batches of float32 inputs."""

    def __init__(self, inputs: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        n = max(batch, len(inputs) // batch * batch) if len(inputs) >= batch else len(inputs)
        self.batches = [inputs[i : i + batch] for i in range(0, n, batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {INPUT_NAME: self.batches[self.index - 1]}


def float_nodes(onnx_path: Path) -> list[str]:
    """The nodes the int8 recipe keeps in float32: the convolution reading the input and the node writing the logits."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    keep = [n.name for n in graph.node if n.op_type == "Conv" and inputs & set(n.input)][:1]
    keep += [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul") and outputs & set(n.output)]
    return keep


def quantize_int8(
    float_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    method: str,
    keep_float: list[str],
    weights: str = DEFAULT_WEIGHT_SCHEMES[0],
) -> Path:
    """Static QDQ int8 of ``float_path`` calibrated on ``calibration`` (see the module docstring for the recipe)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    unsigned, reduce_range = WEIGHT_SCHEMES[weights]
    with contextlib.redirect_stdout(sys.stderr):  # the calibrators print progress
        quantize_static(
            str(float_path),
            str(out_path),
            _Batches(calibration),  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=getattr(CalibrationMethod, method),
        )
    return out_path


def accuracy(module: Any, info: ModelInfo, images: Any, labels: np.ndarray) -> tuple[float, np.ndarray]:
    logits = predict_logits(module, info, images, batch_size=256)
    return float((logits.argmax(1) == labels).mean()), logits


def near_tie_threshold(int8_logits: np.ndarray, float_logits: np.ndarray, target: float) -> dict[str, float]:
    """The smallest top-two gap of the int8 logits (a multiple of ``NEAR_TIE_STEP``, at most ``NEAR_TIE_MAX``)
    under which re-scoring a face in float32 brings int8's top class into agreement with float32's on at
    least ``target`` of the faces: the faces int8 and float32 disagree on are the near ties its rounding flips."""
    top2 = np.sort(int8_logits, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    differ = int8_logits.argmax(1) != float_logits.argmax(1)
    steps = int(round(NEAR_TIE_MAX / NEAR_TIE_STEP))
    for threshold in (i * NEAR_TIE_STEP for i in range(steps + 1)):
        agreement = 1.0 - float((differ & (gap >= threshold)).mean())
        if agreement >= target or threshold >= NEAR_TIE_MAX:
            break
    return {
        "gap": round(threshold, 6),
        "rescored_share": float((gap < threshold).mean()),
        "agreement_before": 1.0 - float(differ.mean()),
        "agreement_after": agreement,
        "target": target,
    }


def make_int8(
    args: argparse.Namespace, module: Any, info: ModelInfo, model_path: Path, float_path: Path, out_path: Path
) -> dict[str, Any]:
    """Quantise ``float_path`` with each weight scheme and calibration method; keep the best on PublicTest
    (``args.choose_by``) at ``out_path``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = load_data(args, ("Training", "PublicTest") if Path(args.data).is_file() else None)
    for name in ("Training", "PublicTest"):
        if name not in data.splits or not len(data.splits[name]):
            raise DataError(f"{data.path} has no {name} images: int8 calibrates on Training and chooses on PublicTest")
    training, public = data.splits["Training"], data.splits["PublicTest"]
    n = min(args.calibration_size, len(training))
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(training), n, replace=False))
    calibration = preprocess(training.images[chosen], info).numpy()
    labels = public.labels.numpy()
    float_accuracy, float_logits = accuracy(module, info, public.images, labels)
    work = float_path.parent
    prepared = work / "prepared.onnx"
    with contextlib.redirect_stdout(sys.stderr):
        quant_pre_process(str(float_path), str(prepared))  # shape inference and graph folds first, as advised
    keep_float = float_nodes(prepared)
    trials: dict[str, dict[str, float]] = {}
    int8_logits: dict[str, np.ndarray] = {}
    for weights in args.weight_schemes:
        for method in args.calibration_methods:
            name = f"{weights}/{method}"
            candidate = quantize_int8(
                prepared, work / f"int8_{weights}_{method}.onnx", calibration, method, keep_float, weights
            )
            acc, logits = accuracy(OnnxModule(candidate, torch.get_num_threads()), info, public.images, labels)
            agreement = float((logits.argmax(1) == float_logits.argmax(1)).mean())
            trials[name] = {"publictest_accuracy": acc, "publictest_argmax_agreement": agreement}
            int8_logits[name] = logits
            log(
                f"int8 {name}: PublicTest accuracy {acc:.4f} (float {float_accuracy:.4f}), "
                f"argmax agreement {agreement:.4f}"
            )
    first, second = (
        ("publictest_argmax_agreement", "publictest_accuracy")
        if args.choose_by == "agreement"
        else ("publictest_accuracy", "publictest_argmax_agreement")
    )
    best = max(trials, key=lambda name: (trials[name][first], trials[name][second]))
    weights, method = best.split("/")
    quantization = {
        "format": "QDQ",
        "weights": {
            "s8": "int8 per-channel symmetric (8 bits)",
            "s8-7bit": "int8 per-channel symmetric, reduce_range (7 bits)",
            "u8": "uint8 per-channel (8 bits)",
        }[weights],
        "weight_scheme": weights,
        "activations": "uint8 per-tensor",
        "float_nodes": keep_float,
        "calibration": {
            "split": "Training",
            "faces": int(n),
            "seed": args.seed,
            "method": method,
            "data_sha256": data.sha256,
        },
        "chosen_on": "PublicTest",
        "chosen_by": args.choose_by,
        "publictest_accuracy": trials[best]["publictest_accuracy"],
        "publictest_argmax_agreement": trials[best]["publictest_argmax_agreement"],
        "float_publictest_accuracy": float_accuracy,
        "trials": trials,
        "near_ties": near_tie_threshold(int8_logits[best], float_logits, args.near_tie_agreement),
    }
    quantization["near_tie_gap"] = quantization["near_ties"]["gap"]
    log(
        f"int8 near ties: faces whose top two int8 logits are under {quantization['near_tie_gap']:g} apart "
        f"({quantization['near_ties']['rescored_share']:.2%} of PublicTest) are re-scored in float32 when served: "
        f"PublicTest agreement {quantization['near_ties']['agreement_after']:.4f}"
    )
    shutil.copyfile(work / f"int8_{weights}_{method}.onnx", out_path)
    write_info(out_path, exported_info(info, model_path, format="onnx-int8", quantization=quantization))
    drop = 100 * (float_accuracy - trials[best]["publictest_accuracy"])
    quantization["accuracy_drop_points"] = drop
    quantization["ok"] = bool(drop <= args.max_accuracy_drop)
    return quantization


def parity_check(
    module: Any,
    onnx_path: Path,
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    atol: float,
    rtol: float,
    exact: bool = True,
) -> dict[str, Any]:
    """Run ``inputs`` (float32, N x 1 x H x W) through torch and onnxruntime in batches of each size.

    ``exact``: ok means every logit within tolerance (float32); otherwise (int8) the differences and
    the argmax agreement are reported and ``ok`` is left to the caller."""
    import onnxruntime as ort

    session = OnnxModule(onnx_path)
    torch_out, onnx_out, checked = [], [], []
    for size in batch_sizes:
        batch = inputs[:size]
        with torch.inference_mode():
            torch_out.append(module(torch.from_numpy(batch)).float().numpy())
        onnx_out.append(session(torch.from_numpy(batch)).numpy())
        checked.append(len(batch))
    ref, got = np.concatenate(torch_out), np.concatenate(onnx_out)
    diff = np.abs(got - ref)
    return {
        "onnxruntime": ort.__version__,
        "batch_sizes": checked,
        "values": int(ref.size),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-6)).max()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "atol": atol,
        "rtol": rtol,
        "ok": bool(np.allclose(got, ref, atol=atol, rtol=rtol)) if exact else True,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "export",
        "Export a model file to ONNX (float32 or int8) and check onnxruntime against torch.",
        data=False,
        model=True,
    )
    p.add_argument("--quantize", default="none", choices=QUANTIZE_MODES, help="int8: static QDQ, needs --data")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder: <model stem>.onnx or <model stem>.int8.onnx")
    p.add_argument("--onnx", default=None, help="output .onnx path; None = in --out")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--atol", type=float, default=1e-4, help="parity: absolute tolerance on float32 logits")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity: relative tolerance on float32 logits")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 7, 64], help="parity: batch sizes run")
    p.add_argument("--seed", type=int, default=0, help="random crops (parity without --data) and calibration faces")
    p.add_argument("--split", default="PrivateTest", help="parity with --data: split whose first images are used")
    g = p.add_argument_group("int8")
    g.add_argument(
        "--calibration-size",
        type=int,
        default=2048,
        help="Training faces the int8 ranges come from (histogram methods hold all their activations: ~5 GB at 2048)",
    )
    g.add_argument(
        "--calibration-methods",
        nargs="+",
        default=list(CALIBRATION_METHODS),
        choices=CALIBRATION_METHODS,
        help="tried in turn with each weight scheme; --choose-by picks among them on PublicTest",
    )
    g.add_argument(
        "--weight-schemes",
        nargs="+",
        default=list(DEFAULT_WEIGHT_SCHEMES),
        choices=list(WEIGHT_SCHEMES),
        help="weight formats tried with each calibration method (module docstring); u8's kernel is much slower",
    )
    g.add_argument(
        "--choose-by",
        default="agreement",
        choices=CHOOSE_BY,
        help="keep the candidate whose PublicTest argmax agrees best with float32's, or the most accurate one",
    )
    g.add_argument(
        "--near-tie-agreement",
        type=float,
        default=0.997,
        help="record the top-two logit gap under which the classifier re-scores a face in float32, the smallest "
        "that brings PublicTest argmax agreement with float32 to this share (0 = no re-scoring)",
    )
    g.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.3,
        help="fail when int8's PublicTest accuracy is more than this many points below float32's",
    )
    return p


def parity_inputs(args: argparse.Namespace, info: ModelInfo) -> tuple[np.ndarray, str]:
    """Float32 model inputs, as many as the largest batch size: real images with --data, else random."""
    n = max(args.batch_sizes)
    if args.data:
        split = canonical_split(args.split)
        data = load_data(args, (split,) if Path(args.data).is_file() else None)
        if split not in data.splits or not len(data.splits[split]):
            raise DataError(f"{data.path} has no {split} images")
        images = data.splits[split].images[:n]
        source = f"{data.path} {split} (first {len(images)})"
    else:
        rng = np.random.default_rng(args.seed)
        images = torch.from_numpy(rng.integers(0, 256, size=(n, 1, *info.input_size), dtype=np.uint8))
        source = f"random uint8 crops (seed {args.seed})"
    return preprocess(images, info).numpy(), source


def _require_onnx_packages() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"error: ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)}")


def output_path(args: argparse.Namespace, model_path: Path) -> Path:
    if args.onnx:
        return Path(args.onnx)
    suffix = ".int8.onnx" if args.quantize == "int8" else ".onnx"
    return Path(args.out) / (model_path.stem + suffix)


def failed_path(onnx_path: Path) -> Path:
    """Where an int8 file that failed its accuracy check goes: beside, under a name nothing serves."""
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".failed.onnx")


def run(args: argparse.Namespace) -> dict[str, Any]:
    _require_onnx_packages()
    if args.quantize == "int8" and not args.data:
        raise DataError("--quantize int8 needs --data: it calibrates on Training faces and chooses on PublicTest")
    module, info, model_path = load(args.model)
    onnx_path = output_path(args, model_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emostream-export-") as tmp:
        # int8 starts from the float32 export, which then is only an intermediate.
        float_path = Path(tmp) / "float32.onnx" if args.quantize == "int8" else onnx_path
        log(f"exporting {model_path} ({info.arch}) to {onnx_path} (opset {args.opset}, quantize {args.quantize})")
        export_onnx(model_path, info, float_path, args.opset)
        write_info(float_path, exported_info(info, model_path, format="onnx-float32"))
        inputs, source = parity_inputs(args, info)
        float_parity = parity_check(module, float_path, inputs, args.batch_sizes, args.atol, args.rtol)
        quantization = None
        if args.quantize == "int8":
            # Written in place only once it passes: the classifier serves <stem>.int8.onnx beside its model.
            made = Path(tmp) / onnx_path.name
            quantization = make_int8(args, module, info, model_path, float_path, made)
            if not quantization["ok"]:
                onnx_path = failed_path(onnx_path)
                log(f"int8 accuracy drop too large: kept at {onnx_path} to look at, not where it would be served")
            shutil.move(made, onnx_path)
    result: dict[str, Any] = {
        "model": str(model_path),
        "onnx": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "quantize": args.quantize,
        "opset": args.opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, *info.input_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names)]},
        "parity_inputs": source,
    }
    if quantization is None:
        result["parity"] = float_parity
    else:
        result["float_parity"] = float_parity
        result["quantization"] = quantization
        result["parity"] = parity_check(module, onnx_path, inputs, args.batch_sizes, args.atol, args.rtol, exact=False)
        result["parity"]["ok"] = bool(float_parity["ok"] and quantization["ok"])
    emit(result)
    parity = result["parity"]
    verdict = "OK" if parity["ok"] else "FAILED"
    if quantization is None:
        log(
            f"parity {verdict}: max |onnx - torch| {parity['max_abs_diff']:.2e} over {parity['values']} logits "
            f"(batch sizes {parity['batch_sizes']}), argmax agreement {parity['argmax_agreement']:.4f}, "
            f"tolerance atol {args.atol:g} rtol {args.rtol:g}"
        )
    else:
        log(
            f"int8 {verdict}: {quantization['weight_scheme']} weights, {quantization['calibration']['method']} "
            f"calibration, PublicTest argmax agreement {quantization['publictest_argmax_agreement']:.4f}, accuracy "
            f"{quantization['publictest_accuracy']:.4f} against float {quantization['float_publictest_accuracy']:.4f} "
            f"(drop {quantization['accuracy_drop_points']:.2f} points, at most {args.max_accuracy_drop:g}); "
            f"argmax agreement with torch {parity['argmax_agreement']:.4f} on {source}; float32 parity "
            f"{'OK' if float_parity['ok'] else 'FAILED'}"
        )
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, run, argv, ok=lambda result: result["parity"]["ok"])
