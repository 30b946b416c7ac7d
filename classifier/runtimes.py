"""What runs the emotion model: torch (the ``.pt2``) or onnxruntime (an ``.onnx`` export, int8 or float32).

Every runtime is a callable taking the preprocessed float32 batch (a torch tensor (N, 1, H, W)) and
returning float32 logits, so :func:`emostream.modelfile.forward_with_tta` runs TTA on any of them.
``classifier.runtime`` picks one: ``torch``; ``onnxruntime`` or ``openvino`` (an ``.onnx`` model file, or
the ``<stem>.int8.onnx`` beside a ``.pt2``, made by ``python -m training export --quantize int8``);
``auto``: torch on CUDA, and on the CPU the fastest of the candidates, each timed on a few batches at
start-up. Which engine runs a given int8 file fastest depends on the CPU's instructions, so none is
assumed: they are timed. Faces an int8 file may misrank (near ties) are re-scored in float32 by the
``.pt2`` itself (:func:`near_tie_rescorer`, :func:`rescore_near_ties`).
"""

from __future__ import annotations

import hashlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classifier.settings import RUNTIMES
from emostream.modelfile import load_model, load_program
from emostream.modelinfo import ModelFileError, ModelInfo
from emostream.onnxmodel import (
    EngineName,
    OnnxModule,
    OpenVinoModule,
    call_engine,
    import_openvino,
    is_onnx,
    openvino_logits,
    openvino_request,
    read_onnx_info,
)

INT8_SUFFIX = ".int8.onnx"
#: Start-up timing of ``auto``: untimed warm-up calls, then timed calls, per candidate, interleaved.
WARMUP_CALLS, TIMED_ROUNDS, CALLS_PER_ROUND = 2, 3, 2


class TorchRuntime:
    """The ``.pt2`` on torch: channels-last, bfloat16 autocast when ``bf16``."""

    name = "torch"

    def __init__(self, path: Path, device: torch.device, bf16: bool) -> None:
        module, info = load_model(path, device=str(device))
        self.module = module.to(memory_format=torch.channels_last)
        self.info: ModelInfo = info
        self.path = path
        self.device = device
        self.bf16 = bf16

    @property
    def label(self) -> str:
        return f"torch {'bf16' if self.bf16 else 'fp32'}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module(x.contiguous(memory_format=torch.channels_last))


def export_record(info: ModelInfo) -> dict[str, Any]:
    """What ``python -m training export`` recorded in an ``.onnx`` file's info (format, source, quantisation);
    empty for a ``.pt2``."""
    return info.extra.get("export", {}) if isinstance(info.extra, dict) else {}


class _OnnxEngine:
    """What the classifier needs of an ONNX engine beyond calling it: its name, device and label."""

    name: EngineName
    info: ModelInfo
    device = torch.device("cpu")
    bf16 = False

    @property
    def label(self) -> str:
        """``<engine> int8`` or ``<engine> fp32``, by the export format the file records."""
        fmt = export_record(self.info).get("format", "onnx")
        return f"{self.name} {'int8' if fmt == 'onnx-int8' else 'fp32'}"


class OrtRuntime(_OnnxEngine, OnnxModule):
    """An ``.onnx`` file on onnxruntime's CPU provider (``threads`` intra-op threads)."""


class OpenVinoRuntime(_OnnxEngine, OpenVinoModule):
    """An ``.onnx`` file on OpenVINO's CPU plugin (``threads`` inference threads)."""


Runtime = TorchRuntime | OrtRuntime | OpenVinoRuntime
#: The engines that run an ``.onnx`` file, by ``classifier.runtime`` name.
ONNX_ENGINES: dict[str, type[OrtRuntime] | type[OpenVinoRuntime]] = {
    engine.name: engine for engine in (OrtRuntime, OpenVinoRuntime)
}


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise ValueError(f"classifier.runtime: unknown runtime {name!r}; one of {', '.join(RUNTIMES)}")
    return name


def near_tie_gap(info: ModelInfo) -> float:
    """The top-two logit gap under which an int8 file's faces are re-scored in float32 (``python -m training
    export`` records it; 0 for float files and int8 files made before it did)."""
    return float(export_record(info).get("quantization", {}).get("near_tie_gap", 0.0))


def rescore_near_ties(
    logits: torch.Tensor, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], gap: float
) -> torch.Tensor:
    """``logits`` with the rows whose top two are under ``gap`` apart replaced by ``forward`` of their inputs."""
    top2 = logits.topk(2, dim=1).values
    near = (top2[:, 0] - top2[:, 1]) < gap
    if not bool(near.any()):
        return logits
    logits = logits.clone()
    logits[near] = forward(x[near]).to(logits.dtype)
    return logits


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block, its count restored after. For a re-score (a few faces: on a
    machine whose cores the other stages keep busy a thread team waits for its slowest, descheduled member,
    docs/model.md) and for torch's part beside an ONNX engine (``EmotionModel.predict``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class OpenVinoProgramRuntime:
    """A ``.pt2``'s program compiled by OpenVINO in float32, on one thread, with no file in between: what
    re-scores an int8 file's near ties on the CPU, a few faces at a time, where torch's call costs more."""

    name = "openvino"
    label = "openvino fp32"
    device = torch.device("cpu")
    bf16 = False

    def __init__(self, path: Path) -> None:
        openvino = import_openvino()
        program, self.info = load_program(path)
        self.path = path
        try:
            with warnings.catch_warnings():  # its converter's deprecation warnings are about torch's internals
                warnings.simplefilter("ignore", FutureWarning)
                model = openvino.convert_model(program)
        except Exception as exc:  # OpenVINO's converter raises its own error types
            raise ModelFileError(f"{path}: openvino cannot convert its program: {exc}") from exc
        self._request = openvino_request(model, 1, path)

    def _logits(self, batch: Any) -> Any:
        return openvino_logits(self._request, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return call_engine(self._logits, x)


class TorchRescoreRuntime(TorchRuntime):
    """The ``.pt2`` on torch in float32, on one thread: the re-scorer where OpenVINO cannot compile it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, torch.device("cpu"), bf16=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with one_torch_thread():
            return super().__call__(x)


Rescorer = OpenVinoProgramRuntime | TorchRescoreRuntime


def near_tie_rescorer(source: Path) -> tuple[Rescorer, str]:
    """What re-scores an int8 file's near ties in float32: ``source`` (the ``.pt2``) compiled by OpenVINO, or,
    where it cannot be, on torch; and why it is not OpenVINO ("" when it is), for the log."""
    try:
        return OpenVinoProgramRuntime(source), ""
    except (ModelFileError, ImportError) as exc:
        return TorchRescoreRuntime(source), f"openvino left out: {exc}"


def int8_beside(path: Path) -> Path:
    """Where ``python -m training export --quantize int8 --out <folder of path>`` writes ``path``'s int8 file."""
    return path.with_name(path.stem + INT8_SUFFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_made_from(onnx_path: Path, info: ModelInfo, source: Path) -> None:
    """ModelFileError unless the ``.onnx`` file was exported from ``source`` (its recorded sha256 matches):
    a retrained ``.pt2`` must not be served through a stale int8 file left beside it."""
    recorded = export_record(info).get("source_sha256")
    if recorded != _sha256(source):
        raise ModelFileError(
            f"{onnx_path} was not exported from {source} (its recorded source sha256 {str(recorded)[:12]} differs); "
            f"make it again: python -m training export --model {source} --quantize int8 --data D --out {source.parent}"
        )


def candidates(
    path: Path, runtime: str, device: torch.device, bf16: bool, threads: int
) -> tuple[list[Runtime], list[str]]:
    """The runtimes that may serve ``path`` under ``runtime``, and why others were left out (for the log)."""
    check_runtime(runtime)
    if is_onnx(path):
        if runtime == "torch":
            raise ModelFileError(
                f"classifier.runtime torch serves .pt2 files; {path} is ONNX (use onnxruntime, openvino or auto)"
            )
        if device.type != "cpu":
            raise ModelFileError(f"{path}: an .onnx model file is served on the CPU, not on {device}")
        if runtime in ONNX_ENGINES:
            return [ONNX_ENGINES[runtime](path, threads)], []
        engines, skipped = _engines_for(path, threads, source=None)
        if not engines:
            raise ModelFileError(f"no engine can serve {path}: {'; '.join(skipped)}")
        return engines, skipped
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return [TorchRuntime(path, device, bf16)], []
    int8 = int8_beside(path)
    if runtime in ONNX_ENGINES:
        if device.type != "cpu":
            raise ModelFileError(f"classifier.runtime {runtime} runs on the CPU, not on {device}")
        if not int8.is_file():
            raise ModelFileError(
                f"classifier.runtime {runtime}: no int8 file {int8} beside {path.name}; make it with "
                f"python -m training export --model {path} --quantize int8 --data D --out {path.parent}"
            )
        check_made_from(int8, read_onnx_info(int8), path)
        return [ONNX_ENGINES[runtime](int8, threads)], []
    found: list[Runtime] = [TorchRuntime(path, device, bf16)]
    if not int8.is_file():
        return found, [f"no {int8.name} beside {path.name}"]
    engines, skipped = _engines_for(int8, threads, source=path)
    return found + engines, skipped


def _engines_for(onnx_path: Path, threads: int, source: Path | None) -> tuple[list[Runtime], list[str]]:
    """Every engine that loads ``onnx_path`` (made from ``source``, when given), and why the others did not."""
    if source is not None:
        # Checked once, before any engine loads the file: the source is hashed once, and a stale file is never compiled.
        try:
            check_made_from(onnx_path, read_onnx_info(onnx_path), source)
        except ModelFileError as exc:
            return [], [f"{name} on {onnx_path.name} left out: {exc}" for name in ONNX_ENGINES]
    found: list[Runtime] = []
    skipped: list[str] = []
    for name, engine_type in ONNX_ENGINES.items():
        try:
            found.append(engine_type(onnx_path, threads))
        except ModelFileError as exc:
            skipped.append(f"{name} on {onnx_path.name} left out: {exc}")
    return found, skipped


def measure(runtime: Any, batch: int, calls: int, input_size: Sequence[int] = (48, 48), seed: int = 0) -> float:
    """Faces/s of ``calls`` forward passes of ``runtime`` on seeded random inputs of ``batch`` faces
    (after one untimed call). The bench can call it on any runtime; inputs are on ``runtime.device``."""
    device = getattr(runtime, "device", torch.device("cpu"))
    x = torch.randn(batch, 1, *input_size, generator=torch.Generator().manual_seed(seed)).to(device)
    runtime(x)
    t0 = time.perf_counter()
    for _ in range(calls):
        runtime(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * calls / (time.perf_counter() - t0)


def compare(
    runtimes: Sequence[Any], batch: int, rounds: int = TIMED_ROUNDS, calls: int = CALLS_PER_ROUND
) -> list[float]:
    """Faces/s of each runtime at ``batch``: ``rounds`` interleaved rounds of ``calls`` calls each, the
    median per runtime, so a burst of other work on the machine hits every candidate alike."""
    rates: list[list[float]] = [[] for _ in runtimes]
    for _ in range(max(1, rounds)):
        for i, runtime in enumerate(runtimes):
            rates[i].append(measure(runtime, batch, calls, runtime.info.input_size))
    return [statistics.median(r) for r in rates]


@dataclass
class Selection:
    runtime: Runtime
    requested: str
    #: label -> faces/s, for the candidates timed by ``auto`` (empty when nothing was timed).
    measured: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    batch: int = 0
    threads: int = 0

    def describe(self) -> str:
        """The one log line: which runtime and file serve, why, and each candidate's measured faces/s."""
        served = f"runtime {self.runtime.label} serves {self.runtime.path}"
        if self.measured:
            rates = ", ".join(f"{label} {rate:,.0f} faces/s" for label, rate in self.measured.items())
            why = f"auto, fastest at batch {self.batch} on {self.threads or 'default'} threads: {rates}"
        elif self.requested == "auto":
            why = "auto, the only candidate"
        else:
            why = f"classifier.runtime {self.requested}"
        notes = "; ".join(self.skipped)
        return f"{served} ({why}{'; ' + notes if notes else ''})"


def select_runtime(
    path: Path,
    runtime: str = "auto",
    device: torch.device | None = None,
    bf16: bool = False,
    threads: int = 0,
    batch: int = 64,
) -> Selection:
    """The runtime serving ``path``: the requested one, or for ``auto`` the fastest candidate at ``batch``."""
    device = device or torch.device("cpu")
    found, skipped = candidates(path, runtime, device, bf16, threads)
    selection = Selection(found[0], runtime, skipped=skipped, batch=batch, threads=threads)
    if len(found) > 1:
        for candidate in found:  # untimed: first calls allocate and pick kernels
            for _ in range(WARMUP_CALLS):
                measure(candidate, batch, 0, candidate.info.input_size)
        rates = compare(found, batch)
        selection.measured = {f"{c.label} ({c.path.name})": r for c, r in zip(found, rates, strict=True)}
        selection.runtime = found[max(range(len(found)), key=rates.__getitem__)]
    return selection


def side_by_side(
    model: Path,
    onnx_files: Sequence[Path] = (),
    batches: Sequence[int] = (1, 64),
    threads: Sequence[int] = (1, 2),
    rounds: int = 5,
    faces_per_call: int = 256,
) -> list[dict[str, Any]]:
    """Faces/s of torch fp32, torch bf16 and every ONNX engine on each of ``onnx_files``, at each batch size and
    thread count, interleaved in rounds (medians), all in one run so that their ratios share the machine.
    For docs/benchmarks.md; ``python -m classifier.runtimes --help``."""
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        runtimes: list[Any] = [
            TorchRuntime(model, torch.device("cpu"), bf16=False),
            TorchRuntime(model, torch.device("cpu"), bf16=True),
        ]
        runtimes += [engine(path, n_threads) for path in onnx_files for engine in ONNX_ENGINES.values()]
        for batch in batches:
            calls = max(1, faces_per_call // batch)
            for runtime in runtimes:
                measure(runtime, batch, 1, runtime.info.input_size)
            for runtime, rate in zip(runtimes, compare(runtimes, batch, rounds, calls), strict=True):
                rows.append(
                    {"runtime": runtime.label, "file": runtime.path.name, "threads": n_threads, "batch": batch}
                    | {"faces_per_s": rate}
                )
    return rows


if __name__ == "__main__":
    import argparse
    import json
    import platform

    from emostream.cpu import cpu_info

    parser = argparse.ArgumentParser(prog="python -m classifier.runtimes", description=side_by_side.__doc__)
    parser.add_argument("--model", type=Path, default=Path(__file__).parent / "models" / "emotion.pt2")
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help=".onnx files (float32, int8) to time too")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    found = side_by_side(args.model, args.onnx, args.batches, args.threads, args.rounds)
    machine = {"cpu": cpu_info().model, "flags": cpu_info().serving_flags(), "python": platform.python_version()}
    print(json.dumps({"machine": machine, "results": found}, indent=1))
    for row in found:
        print(f"{row['runtime']:18s} {row['file']:20s} threads {row['threads']} batch {row['batch']:3d}: "
              f"{row['faces_per_s']:8,.0f} faces/s")  # fmt: skip
