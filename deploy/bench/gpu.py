"""The classifier's CUDA path, measured on its own: ``python -m deploy.bench.gpu``.

``python -m deploy bench`` measures the CPU machine the pipeline runs on. A CUDA device is lent to this
project rarely and for minutes (docs/benchmarks.md, "The CUDA path"), so this is one prepared run:
every case at every batch size for each model, top-class agreement with torch float32 on the CPU, one
JSON file and a table, in a few minutes. Every case goes from uint8 crops in host memory to
probabilities in host memory, as the classifier does:

- ``served``: :class:`~classifier.model.EmotionModel` on CUDA as the classifier serves it (pinned host
  memory, non-blocking copy, bfloat16 autocast, one synchronising copy back per batch).
- ``graph``: the same step captured once per batch size in a CUDA graph between static pinned buffers
  (:class:`GraphedStep`), then replayed: no per-kernel launch cost.
- ``compiled``: the module under ``torch.compile`` (Inductor's default mode), fed as ``served`` is.

and ``module``: the module alone on a batch already on the device (no copies, no preparation), the
ceiling the others approach. On a machine without CUDA, ``--device cpu`` runs ``served`` and ``module``
(the cases that need CUDA are listed as skipped), which is how the tests check this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.model import EmotionModel

#: Issue 15's figure for the classifier on a lent GPU.
GPU_TARGET_FACES_PER_S = 50_000.0
#: The top-class agreement with torch float32 every runtime is held to (tests/classifier/test_runtimes.py).
PARITY_TARGET = 0.99
DEFAULT_BATCHES = (256, 1024, 4096)
#: In the order they run: ``compiled`` last, its compilation being the slowest to start.
CASES = ("served", "graph", "module", "compiled")
CUDA_ONLY = frozenset({"graph"})
EXIT_NO_DEVICE = 2


@dataclass(frozen=True)
class CaseResult:
    model: str
    case: str
    batch: int
    faces_per_s: float | None
    ms_per_batch: float | None
    #: Top-class agreement with torch float32 on the CPU over all crops (None where not measured).
    agreement: float | None
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class GraphedStep:
    """One classifier step at a fixed batch size captured in a CUDA graph: uint8 crops copied from a
    pinned host buffer, scaled and normalised, the module under bfloat16 autocast, the calibrated
    softmax copied back into a pinned host buffer. A call fills the input buffer, replays, waits."""

    def __init__(self, model: EmotionModel, batch: int) -> None:
        info, module = model.info, model.module
        self.batch = batch
        self.host_in = torch.empty((batch, *info.input_size), dtype=torch.uint8).pin_memory()
        self.host_out = torch.empty((batch, len(info.class_names)), dtype=torch.float32).pin_memory()
        device_in = torch.empty((batch, 1, *info.input_size), dtype=torch.uint8, device=model.device)

        def step() -> None:
            device_in.copy_(self.host_in.unsqueeze(1), non_blocking=True)
            x = model.normalise(device_in).contiguous(memory_format=torch.channels_last)
            # Autocast's weight cache must be off while a graph is captured (torch.cuda.graphs' notes).
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                logits = module(x)
            self.host_out.copy_(model.probabilities(logits), non_blocking=True)

        # Warm-up on a side stream before capture, as torch's CUDA graph notes require.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            step()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) != self.batch:
            raise ValueError(f"a graph captured at batch {self.batch} was given {len(crops)} crops")
        self.host_in.numpy()[:] = crops
        self.graph.replay()
        torch.cuda.current_stream().synchronize()
        return self.host_out.numpy().copy()


def batches_of(crops: np.ndarray, batch: int) -> list[np.ndarray]:
    """``crops`` cycled into whole batches covering every crop at least once."""
    n = max(1, -(-len(crops) // batch))
    return [crops[np.arange(i * batch, (i + 1) * batch) % len(crops)] for i in range(n)]


def timed_rate(call: Callable[[np.ndarray], Any], batches: Sequence[np.ndarray], seconds: float) -> tuple[float, float]:
    """(faces/s, ms a batch) of ``call`` cycling through ``batches`` for about ``seconds`` after two warm-up
    calls; each call returns host memory, so each is finished when it returns."""
    for b in batches[:2]:
        call(b)
    faces = calls = 0
    start = time.perf_counter()
    while True:
        b = batches[calls % len(batches)]
        call(b)
        faces += len(b)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return faces / elapsed, 1000.0 * elapsed / calls


def agreement(
    call: Callable[[np.ndarray], np.ndarray], batches: Sequence[np.ndarray], reference: np.ndarray, count: int
) -> float:
    """Top-class agreement of ``call`` with ``reference`` (the CPU float32 probabilities of the first ``count``
    cycled crops)."""
    top = np.concatenate([call(b).argmax(1) for b in batches])[:count]
    return float((top == reference[:count].argmax(1)).mean())


def module_call(model: EmotionModel) -> Callable[[np.ndarray], Any]:
    """The module alone on a device-resident batch: each crop batch is moved once, ahead, and cached."""
    cache: dict[int, torch.Tensor] = {}
    module, device = model.module, model.device

    def call(crops: np.ndarray) -> Any:
        key = id(crops)
        if key not in cache:
            cache[key] = model.prepare(crops).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=model.bf16):
            out = module(cache[key])
        if device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        return out

    return call


def measure_model(
    path: Path,
    crops: np.ndarray,
    batch_sizes: Sequence[int],
    seconds: float,
    device: torch.device,
    cases: Sequence[str],
    deadline: float = float("inf"),
    progress: Callable[[str], None] = print,
) -> list[CaseResult]:
    """Every case of ``cases`` at every batch size for the model at ``path`` (see the module docstring);
    the cases left when ``time.monotonic()`` passes ``deadline`` are listed as skipped."""
    reference = EmotionModel(path, device="cpu", bf16=False, runtime="torch", announce=False).predict(crops)
    served = EmotionModel(path, device=str(device), runtime="torch", announce=False)
    results: list[CaseResult] = []
    compiled_model: Any = None
    for batch in batch_sizes:
        batches = batches_of(crops, batch)
        for case in cases:
            if case in CUDA_ONLY and device.type != "cuda":
                results.append(CaseResult(path.name, case, batch, None, None, None, skipped="needs CUDA"))
                continue
            if time.monotonic() > deadline:
                results.append(CaseResult(path.name, case, batch, None, None, None, skipped="out of time"))
                continue
            progress(f"{path.name}: {case} at batch {batch}")
            call: Callable[[np.ndarray], Any]
            if case == "served":
                call = served.predict
            elif case == "module":
                call = module_call(served)
            elif case == "graph":
                call = GraphedStep(served, batch)
            else:  # compiled: the served step with the module swapped for its compiled form
                if compiled_model is None:
                    compiled_model = EmotionModel(path, device=str(device), runtime="torch", announce=False)
                    compiled_model.runtime.module = torch.compile(compiled_model.runtime.module)
                call = compiled_model.predict
            rate, ms = timed_rate(call, batches, seconds)
            agree = agreement(call, batches, reference, len(crops)) if case != "module" else None
            results.append(CaseResult(path.name, case, batch, rate, ms, agree))
    return results


def save_crops(video: Path, out: Path) -> int:
    """The face crops the CPU bench classifies (YuNet with the bench's settings on its frames of ``video``),
    saved to ``out`` as uint8 (N, H, W); how many."""
    from deploy.bench.settings import BenchSettings
    from deploy.bench.standalone import decode_frames, measure_detector

    bench = BenchSettings()
    frames = decode_frames(video, bench.stage_frames)
    _, crops, _ = measure_detector(frames, "yunet", bench.yunet, bench.downscale, bench.min_face)
    faces = np.concatenate(crops) if crops else np.empty((0, 48, 48), np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, faces)
    return len(faces)


def machine(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(
            gpu=props.name,
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return out


def report(results: Sequence[CaseResult]) -> str:
    """The table and the verdict against :data:`GPU_TARGET_FACES_PER_S`."""
    lines = ["| model | case | batch | faces/s | ms a batch | agreement with fp32 |", "|---|---|---|---|---|---|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.model} | {r.case} | {r.batch} | skipped: {r.skipped} | | |")
            continue
        agree = f"{r.agreement:.2%}" if r.agreement is not None else ""
        lines.append(f"| {r.model} | {r.case} | {r.batch} | {r.faces_per_s:,.0f} | {r.ms_per_batch:.2f} | {agree} |")
    served = [r for r in results if r.faces_per_s is not None and r.case != "module"]
    if served:
        best = max(served, key=lambda r: r.faces_per_s or 0.0)
        met = (best.faces_per_s or 0.0) >= GPU_TARGET_FACES_PER_S and (best.agreement or 0.0) >= PARITY_TARGET
        lines.append(
            f"best host-to-host: {best.faces_per_s:,.0f} faces/s ({best.model}, {best.case}, batch {best.batch}), "
            f"target >= {GPU_TARGET_FACES_PER_S:,.0f} with agreement >= {PARITY_TARGET:.0%}: "
            f"{'met' if met else 'not met'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from classifier.settings import SHIPPED_ACCURATE_MODEL, SHIPPED_MODEL

    parser = argparse.ArgumentParser(
        prog="python -m deploy.bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=Path, help="real face crops, uint8 (N, H, W) .npy (see --save-crops)")
    parser.add_argument(
        "--save-crops",
        type=Path,
        metavar="NPY",
        help="only write the crops the CPU bench classifies (YuNet on --video) to NPY and exit: "
        "the GPU machine has no ../shared",
    )
    parser.add_argument("--video", type=Path, default=None, help="the video --save-crops reads (the bench's)")
    parser.add_argument(
        "--model",
        action="append",
        type=Path,
        default=None,
        help="a .pt2 model file (repeatable; default: the shipped default and accurate models)",
    )
    parser.add_argument(
        "--batch",
        action="append",
        type=int,
        default=None,
        help=f"a batch size (repeatable; default {', '.join(map(str, DEFAULT_BATCHES))})",
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case and batch size")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=420.0,
        help="start no case after this many seconds (those left are listed as skipped): a lease is short",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tests' dry run)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; of {', '.join(CASES)}")
    if args.save_crops:
        from deploy.bench.settings import DEFAULT_VIDEO

        video = args.video or DEFAULT_VIDEO
        saved = save_crops(video, args.save_crops)
        print(f"{saved} face crops from {video} written to {args.save_crops}")
        return 0
    if args.crops is None:
        parser.error("--crops is required (or --save-crops to make them)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch sees none (run with --device cpu for a dry run)", file=sys.stderr)
        return EXIT_NO_DEVICE
    crops = np.load(args.crops)
    if crops.dtype != np.uint8 or crops.ndim != 3 or len(crops) == 0:
        parser.error(f"--crops: {args.crops} holds {crops.dtype} {crops.shape}, not uint8 (N, H, W) crops")
    device = torch.device(args.device)
    models = args.model or [SHIPPED_MODEL, SHIPPED_ACCURATE_MODEL]
    batch_sizes = args.batch or list(DEFAULT_BATCHES)
    started = time.time()
    deadline = time.monotonic() + args.max_seconds
    results: list[CaseResult] = []
    for path in models:
        results += measure_model(path, crops, batch_sizes, args.seconds, device, cases, deadline)
        if args.json:  # after each model: what was measured survives a run cut short
            out = {
                "machine": machine(device),
                "crops": len(crops),
                "seconds": args.seconds,
                "target_faces_per_s": GPU_TARGET_FACES_PER_S,
                "elapsed_s": time.time() - started,
                "results": [r.to_json() for r in results],
            }
            args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
