"""``python -m training [SUBCOMMAND] ...``

Subcommands map to modules exposing ``cli(argv) -> int``. A first argument that is not a known
subcommand (an option such as ``--data``, or nothing) means ``train``, so ``python -m training --data
...`` and ``python -m training train --data ...`` are the same. Subcommands register here.
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
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
