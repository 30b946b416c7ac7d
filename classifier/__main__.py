"""``python -m classifier``: the batching emotion classifier process."""

from __future__ import annotations

import argparse
import sys

from classifier.settings import ClassifierSettings
from emostream.cpu import CpuBudget, thread_budget
from emostream.modelinfo import ModelFileError
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.settings_cli import SettingsParser


def build_parser() -> argparse.ArgumentParser:
    parser = SettingsParser(prog="python -m classifier", description=__doc__, settings=ClassifierSettings)
    parser.add_argument("--pull", required=True, help="endpoint to bind for faces from the detectors")
    parser.add_argument("--push", required=True, help="endpoint of the sink to send events to")
    add_common_args(parser)
    return parser


def set_torch_threads(requested: int, budget: CpuBudget) -> str:
    """torch's intra-op pool: ``classifier.threads``, or the CPU budget for 0 (auto), never the host's
    cores (torch's own default ignores cgroup quotas). Runtimes with their own pools read the same number
    through :func:`emostream.cpu.thread_budget`."""
    import torch

    torch.set_num_threads(thread_budget(requested, budget))
    return f"torch {torch.get_num_threads()}" + (" (auto)" if requested == 0 else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: ClassifierSettings = args.settings
    stop = start_process("classifier", args, lambda budget: set_torch_threads(settings.threads, budget))
    from classifier.model import serving_model
    from classifier.service import ClassifierService
    from classifier.swap import ControlError

    try:
        model = serving_model(settings)
    except (ModelFileError, RuntimeError) as exc:
        print(f"classifier: {exc}", file=sys.stderr)
        return EXIT_FATAL
    model.warm_up()
    try:
        service = ClassifierService(model, args.pull, args.push, settings, keys=args.curve_keys)
    except ControlError as exc:  # the control endpoint's port is taken: a restart may find it free
        print(f"classifier: {exc}", file=sys.stderr)
        return 1
    service.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
