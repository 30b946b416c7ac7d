"""``python -m training [SUBCOMMAND] ...``

Subcommands map to modules exposing ``cli(argv) -> int``. A first argument that is an option (such as
``--data``) means ``train``, so ``python -m training --data ...`` and ``python -m training train --data
...`` are the same. ``python -m training --help`` (or nothing at all) lists the subcommands with one
line each; ``python -m training SUBCOMMAND --help`` shows one's options. Subcommands register here,
with their line in :data:`SUMMARIES`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

DEFAULT = "train"
SUBCOMMANDS: dict[str, str] = {
    "train": "training.train",
    "explore": "training.explore",
    "evaluate": "training.evaluate",
    "calibrate": "training.calibrate",
    "gradcam": "training.gradcam",
    "export": "training.export",
    "pipeline-eval": "training.pipeline_eval",
    "video-labels": "training.video_labels",
    "ensemble": "training.ensemble",
    "served-crops": "training.served_crops",
    "framing": "training.framing",
}


#: One line per subcommand for ``python -m training --help`` (here, so that listing them imports no torch).
SUMMARIES: dict[str, str] = {
    "train": "train the emotion model on FER2013 (CSV or image folders) and write a model file (the default)",
    "explore": "class counts, pixel histograms and sample grids of a data set",
    "evaluate": "accuracy, macro-F1, confusion and calibration of a model file on a data split",
    "calibrate": "fit a model file's softmax temperature on PublicTest and optionally store it",
    "gradcam": "Grad-CAM heatmaps: where a model file looks in face images (photos: each detected face)",
    "export": "export a model file to ONNX and check onnxruntime against torch",
    "pipeline-eval": "score the served detector + crop + classifier path on labelled faces placed in frames",
    "video-labels": "label every frame of a video through the served detector, model and tracking",
    "ensemble": "average several model files' logits in one calibrated model file",
    "served-crops": "crop every face of a split as the served detector does, for --served-crops training",
    "framing": "measure where YuNet finds the five landmarks in FER2013's images (the aligned crops' template)",
}


def overview() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: python -m training [SUBCOMMAND] [OPTIONS]",
        "",
        "Train, evaluate, calibrate, explain and export the emotion model the classifier serves.",
        f"Options without a subcommand go to {DEFAULT}.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {SUMMARIES[name]}" for name in SUBCOMMANDS),
        "",
        "python -m training SUBCOMMAND --help shows its options; training/README.md has the recipes.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(overview())
        return 0
    if not argv:
        print(overview(), file=sys.stderr)
        return 2
    name = DEFAULT
    if argv and argv[0] in SUBCOMMANDS:
        name = argv.pop(0)
    elif argv and not argv[0].startswith("-"):
        print(
            f"error: unknown subcommand {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)} "
            f"(or start with options to {DEFAULT})",
            file=sys.stderr,
        )
        return 2
    # Imported lazily: each subcommand pulls its own heavy dependencies only when run.
    module = importlib.import_module(SUBCOMMANDS[name])
    return int(module.cli(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
