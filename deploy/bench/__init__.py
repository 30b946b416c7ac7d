"""``python -m deploy bench``: how fast emostream is on this machine, next to the study's one-process loop.

Four measurements, all taken in one run so that their ratios share the machine's conditions (other
processes come and go on a small machine; absolute numbers drift between runs, ratios much less):

1. **Baseline** (:mod:`deploy.baseline`): the study's sequential loop on the video, frames/s.
2. **Stages standalone**, each in this one process on the same frames: decode (what a capture process
   does), detection (YuNet and Haar at the configured downscale, frames/s), the classifier at batch 1
   and batched (faces/s), the model's FLOPs and the machine's measured matmul peaks (bf16 where native,
   else float32; and int8, which bounds an int8 model file).
3. **End to end**: the real pipeline under the launcher (``python -m deploy run``) for 1, 2 and 4
   cameras replaying the video at its own 25 fps, events read from the sink's PUB socket, drops read
   from every stage's ``/metrics``; plus one run with ``pacing: fast`` and ``drop_policy: block``,
   which measures the pipeline's maximum throughput.
4. **Output**: an aligned text table, a JSON file, a PNG plot.

How the ratios are defined is written into the JSON (``definitions``) next to the numbers.

``--soak MINUTES`` instead runs four live cameras for a long time and judges memory growth, restarts
and drop accounting (:mod:`.soak`).

The package, by concern: :mod:`.settings` (what a run measures with, the pipeline's config and ports),
:mod:`.standalone` (stages alone), :mod:`.endtoend` (the launched pipeline), :mod:`.procstats` (CPU
and /metrics), :mod:`.ratios` (derived numbers), :mod:`.targets` (the project's targets and the machine
in words), :mod:`.report` (table, JSON, plot, the README's table) and :mod:`.command` (the
subcommand). Measurements are frozen dataclasses; ``to_json()`` gives the JSON. Heavy imports
(torch, matplotlib) happen inside the functions that need them, so registering this subcommand costs
``python -m deploy run`` nothing.
"""

from deploy.bench.command import EXIT_MISSING, Progress, add_arguments, cmd_bench, machine_info, run_bench
from deploy.bench.endtoend import (
    GAP_GRACE_S,
    DropStats,
    Record,
    RunInfo,
    RunResult,
    StageLoad,
    WindowStats,
    run_end_to_end,
    seq_gaps,
    timeline,
    window_stats,
)
from deploy.bench.procstats import CpuLoad, CpuWatch, Snapshot, busy_cores, machine_ticks, take_snapshot
from deploy.bench.ratios import DEFINITIONS, Headline, derive, stage_capacity
from deploy.bench.report import (
    align,
    all_runs,
    format_report,
    noisy_steps,
    read_json,
    readme_table,
    update_readme,
    write_json,
    write_plot,
)
from deploy.bench.settings import DEFAULT_VIDEO, DEFAULT_YUNET, BenchSettings, PipelineSpec, pipeline_config
from deploy.bench.soak import format_soak, run_soak, soak_verdict, write_soak_plot
from deploy.bench.standalone import (
    AccurateResult,
    ClassifierResult,
    CpuSteadiness,
    DecodeResult,
    DetectorResult,
    IntervalRow,
    MatmulPeak,
    count_flops_per_face,
    interval_study,
    measure_accurate,
    measure_classifier,
    measure_cpu_steadiness,
    measure_detector,
    measure_int8_peak,
    measure_matmul_peak,
    read_frames,
    steadiness,
)
from deploy.bench.targets import TargetResult, check_targets, machine_text

__all__ = [
    "DEFAULT_VIDEO",
    "DEFAULT_YUNET",
    "DEFINITIONS",
    "EXIT_MISSING",
    "GAP_GRACE_S",
    "AccurateResult",
    "BenchSettings",
    "ClassifierResult",
    "CpuSteadiness",
    "CpuLoad",
    "CpuWatch",
    "DecodeResult",
    "DetectorResult",
    "DropStats",
    "Headline",
    "IntervalRow",
    "MatmulPeak",
    "PipelineSpec",
    "Progress",
    "Record",
    "RunInfo",
    "RunResult",
    "Snapshot",
    "StageLoad",
    "TargetResult",
    "WindowStats",
    "add_arguments",
    "align",
    "all_runs",
    "busy_cores",
    "check_targets",
    "cmd_bench",
    "count_flops_per_face",
    "derive",
    "format_report",
    "format_soak",
    "interval_study",
    "machine_info",
    "machine_text",
    "machine_ticks",
    "measure_accurate",
    "measure_classifier",
    "measure_cpu_steadiness",
    "measure_detector",
    "measure_int8_peak",
    "measure_matmul_peak",
    "noisy_steps",
    "pipeline_config",
    "read_frames",
    "read_json",
    "readme_table",
    "run_bench",
    "run_end_to_end",
    "run_soak",
    "seq_gaps",
    "steadiness",
    "soak_verdict",
    "stage_capacity",
    "take_snapshot",
    "timeline",
    "update_readme",
    "window_stats",
    "write_json",
    "write_plot",
    "write_soak_plot",
]
