"""``python -m training export --model M [--onnx OUT.onnx]``: ONNX export with a parity check.

The model file's ``torch.export`` program is handed as is to ``torch.onnx.export(..., dynamo=True)``
(the exporter built on torch.export; it needs ``onnxscript``), so the ONNX graph is translated from
the very graph the classifier serves and keeps its dynamic batch dimension. The ``emostream.json``
ModelInfo (class names, mean/std, temperature) is copied into the ONNX ``metadata_props`` so the
file stays self-describing. Input ``input`` float32 (N, 1, 48, 48), normalised as in the model
file; output ``logits`` (N, classes).

Parity: onnxruntime (CPU) and torch run the same preprocessed inputs -- seeded random uint8 crops,
or real images with ``--data`` -- at several batch sizes (checks the dynamic batch too); it passes
when every logit satisfies ``|onnx - torch| <= atol + rtol * |torch|`` (numpy.allclose). The result
is printed as ONE JSON object on stdout; the exit status is 1 when parity fails.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emostream.modelfile import INFO_FILE, ModelInfo
from training.cli_support import canonical_split, emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError
from training.inference import load, preprocess

INPUT_NAME, OUTPUT_NAME = "input", "logits"


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
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = INFO_FILE, info.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return onnx_path


def parity_check(
    module: Any,
    onnx_path: Path,
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """Run ``inputs`` (float32, N x 1 x H x W) through torch and onnxruntime in batches of each size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would flood stderr
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    torch_out, onnx_out, checked = [], [], []
    for size in batch_sizes:
        batch = inputs[:size]
        with torch.inference_mode():
            torch_out.append(module(torch.from_numpy(batch)).float().numpy())
        onnx_out.append(session.run(None, {input_name: batch})[0])
        checked.append(len(batch))
    ref, got = np.concatenate(torch_out), np.concatenate(onnx_out)
    diff = np.abs(got - ref)
    return {
        "onnxruntime": ort.__version__,
        "batch_sizes": checked,
        "values": int(ref.size),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-6)).max()),
        "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "atol": atol,
        "rtol": rtol,
        "ok": bool(np.allclose(got, ref, atol=atol, rtol=rtol)),
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "export", "Export a model file to ONNX and check onnxruntime against torch.", data=False, model=True
    )
    p.add_argument("--onnx", default=None, help="output .onnx; None = the model path with .onnx")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--atol", type=float, default=1e-4, help="parity: absolute tolerance on logits")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity: relative tolerance on logits")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 7, 64], help="parity: batch sizes run")
    p.add_argument("--seed", type=int, default=0, help="parity: random crops' seed (without --data)")
    p.add_argument("--split", default="PrivateTest", help="parity with --data: split whose first images are used")
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    _require_onnx_packages()
    module, info, model_path = load(args.model)
    onnx_path = Path(args.onnx) if args.onnx else model_path.with_suffix(".onnx")
    log(f"exporting {model_path} ({info.arch}) to {onnx_path} (opset {args.opset})")
    export_onnx(model_path, info, onnx_path, args.opset)
    inputs, source = parity_inputs(args, info)
    parity = parity_check(module, onnx_path, inputs, args.batch_sizes, args.atol, args.rtol)
    result = {
        "model": str(model_path),
        "onnx": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": args.opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, *info.input_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(info.class_names)]},
        "parity_inputs": source,
        "parity": parity,
    }
    emit(result)
    verdict = "OK" if parity["ok"] else "FAILED"
    log(
        f"parity {verdict}: max |onnx - torch| {parity['max_abs_diff']:.2e} over {parity['values']} logits "
        f"(batch sizes {parity['batch_sizes']}), argmax agreement {parity['argmax_agreement']:.4f}, "
        f"tolerance atol {args.atol:g} rtol {args.rtol:g}"
    )
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, run, argv, ok=lambda result: result["parity"]["ok"])
