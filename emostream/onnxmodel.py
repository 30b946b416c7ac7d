"""The ONNX form of the model file (``.onnx``): the same :class:`~emostream.modelinfo.ModelInfo`, run by onnxruntime.

``python -m training export`` writes it (float32, or int8 with ``--quantize int8``) with the
``emostream.json`` ModelInfo in the ONNX ``metadata_props``, so it is self-describing like the ``.pt2``.
Input ``input`` float32 (N, 1, H, W) normalised as the ``.pt2``'s; output ``logits`` (N, classes).

Two engines run it, each called like the torch module (a float32 tensor in, a float32 tensor of
logits out), so ``forward_with_tta``, ``evaluate`` and the classifier serve it unchanged:
:class:`OnnxModule` on onnxruntime's CPU execution provider, :class:`OpenVinoModule` on OpenVINO's
CPU plugin. Which is faster depends on the CPU (docs/benchmarks.md); both read the same file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from emostream.modelinfo import INFO_FILE, ModelFileError, ModelInfo

ONNX_SUFFIX = ".onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: The engines' names, as ``classifier.runtime`` and ``evaluate --engine`` take them (each class's ``name``).
EngineName = Literal["onnxruntime", "openvino"]


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def set_onnx_info(proto: Any, info: ModelInfo) -> None:
    """Replace the ONNX model ``proto``'s metadata_props with ``info`` (as the ``emostream.json`` entry)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = INFO_FILE, info.to_json()


def read_onnx_info(path: str | Path) -> ModelInfo:
    """The ModelInfo an ``.onnx`` model file carries; ModelFileError for a file without one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ModelFileError(f"{path} is not an ONNX model file: {exc}") from exc
    metadata = {p.key: p.value for p in proto.metadata_props}
    if INFO_FILE not in metadata:
        raise ModelFileError(
            f"{path} has no {INFO_FILE} in its metadata_props: not an emostream model file "
            "(python -m training export writes one)"
        )
    try:
        return ModelInfo.from_json(metadata[INFO_FILE])
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc


#: onnxruntime's session config entry for whether idle intra-op threads spin ("1", its default) or sleep.
SPINNING_ENTRY = "session.intra_op.allow_spinning"


def session_options(threads: int = 0) -> Any:
    """Serving options: ``threads`` intra-op threads (0: onnxruntime's default, one per core), one
    sequential inter-op stream (a chain of convolutions has no parallel branches worth a pool), all
    graph optimisations (they fuse the int8 file's QuantizeLinear/DequantizeLinear pairs into integer kernels),
    and pool threads that sleep when idle instead of spinning: the stages share the cores, and a pool that
    spins between batches burns CPU the other stages need, for no gain in speed (docs/benchmarks.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would flood stderr
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(SPINNING_ENTRY, "0")
    return options


class _OnnxFileModule:
    """An ``.onnx`` model file called like the torch module: a float32 tensor in, a tensor of logits out.
    Each engine loads the file and runs one NCHW float32 array (:meth:`_logits`)."""

    #: The engine's name (configs, logs, the bench JSON's version key) and how reports write it.
    name: EngineName
    title: str

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.info = read_onnx_info(self.path)
        self.threads = threads

    def _logits(self, batch: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        return call_engine(self._logits, x)


def call_engine(logits: Any, x: Any) -> Any:
    """``logits`` (an engine's call on one NCHW float32 array) on the torch tensor ``x``, as a torch tensor."""
    import numpy as np
    import torch

    # A torch tensor may be channels-last or a strided view (TTA's shifted crops); the engines read NCHW.
    return torch.from_numpy(logits(np.ascontiguousarray(x.detach().cpu().float().numpy())))


class OnnxModule(_OnnxFileModule):
    """An ``.onnx`` model file on onnxruntime (CPU), called like the torch module: tensor in, logits tensor out."""

    name: EngineName = "onnxruntime"
    title = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        super().__init__(path, threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{self.path}: expected one input, the model has {len(inputs)}")
        self.input_name = inputs[0].name

    def _logits(self, batch: Any) -> Any:
        return self.session.run(None, {self.input_name: batch})[0]


#: OpenVINO's usage-telemetry package. Its model converter (``openvino.convert_model``) sends usage events to
#: Google Analytics from a forked child and writes a client id under ``~/intel``, unless a consent file there
#: declines; each of its modules falls back to a stub of its own when this package cannot be imported.
OPENVINO_TELEMETRY = "openvino_telemetry"


def import_openvino() -> Any:
    """The ``openvino`` module, with its usage telemetry left out: a service watching cameras sends nothing
    anywhere of its own accord, and forks nothing. The one place emostream imports OpenVINO. ImportError
    when it is not installed."""
    if OPENVINO_TELEMETRY not in sys.modules:
        # None in sys.modules makes ``import openvino_telemetry`` raise ImportError, so OpenVINO takes its stub.
        sys.modules[OPENVINO_TELEMETRY] = None  # type: ignore[assignment]
    import openvino

    return openvino


def openvino_request(model: Any, threads: int, what: Path) -> Any:
    """An infer request for ``model`` (an ``.onnx`` path or an ``openvino.Model``) compiled for the CPU.

    ``threads`` inference threads (0: OpenVINO's choice), one stream, any batch size. Threads are not
    pinned to cores (the stages share them), and float layers run in float32, as on onnxruntime, on
    every CPU: OpenVINO's default on a CPU with bf16 would be bf16, and the logits would then depend on
    the machine. ModelFileError, naming ``what``, when OpenVINO is missing or cannot compile it.
    """
    try:
        openvino = import_openvino()
    except ImportError as exc:
        raise ModelFileError(f"{what}: the openvino package is not installed ({exc})") from exc
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = openvino.Core().compile_model(model, "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelFileError(f"{what}: openvino cannot compile it: {exc}") from exc
    return compiled.create_infer_request()


def openvino_logits(request: Any, batch: Any) -> Any:
    # infer() copies its outputs out of the request (share_outputs=False), so they outlive the next call.
    return request.infer({0: batch})[0]


class OpenVinoModule(_OnnxFileModule):
    """An ``.onnx`` model file compiled by OpenVINO for the CPU (:func:`openvino_request`), called like the
    torch module."""

    name: EngineName = "openvino"
    title = "OpenVINO"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        super().__init__(path, threads)
        self._request = openvino_request(str(self.path), threads, self.path)

    def _logits(self, batch: Any) -> Any:
        return openvino_logits(self._request, batch)


#: The engines that run an ``.onnx`` model file, by name (``classifier.runtime``, ``evaluate --engine``).
ENGINES: dict[str, type[OnnxModule] | type[OpenVinoModule]] = {
    engine.name: engine for engine in (OnnxModule, OpenVinoModule)
}


def load_onnx_model(
    path: str | Path, threads: int = 0, engine: str = "onnxruntime"
) -> tuple[OnnxModule | OpenVinoModule, ModelInfo]:
    if engine not in ENGINES:
        raise ModelFileError(f"unknown ONNX engine {engine!r}; one of {', '.join(ENGINES)}")
    module = ENGINES[engine](path, threads)
    return module, module.info
