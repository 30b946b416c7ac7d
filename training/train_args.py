"""The options of ``python -m training [train]``: the argparse groups hold every default, a YAML
``--config`` replaces defaults (keys = option names, checked like flags) and explicit flags still win."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from emostream.modelinfo import TTA_MODES
from training import presets
from training.cli_support import add_data_arguments
from training.models import ARCHS

SELECT_METRICS = ("accuracy", "macro_f1")  # PublicTest model selection: evaluate()'s key names


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training [train]",
        description="Train the FER2013 emotion classifier and write an emostream model file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-c", "--config", default=None, help="YAML file of defaults (keys = option names)")

    g = add_data_arguments(
        p,
        required=False,  # may come from --config; parse_args checks it
        data_help="fer2013.csv(.gz) or an image folder <root>/<split>/<class>/*.png with Training/PublicTest/"
        "PrivateTest (or train/val/test) splits (required)",
    )
    g.add_argument("--out", default=None, help="output directory (required)")
    g.add_argument("--train-limit", type=int, default=0, help="use only the first N Training rows (0 = all)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet_fer", choices=sorted(ARCHS))
    g.add_argument("--dropout", type=float, default=0.3, help="dropout before the classifier layer")
    g.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="start from this model file's weights (same --arch; fine-tuning) instead of random ones",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("-b", "--batch-size", type=int, default=64)
    g.add_argument("--opt", default="adamw", choices=["adamw", "sgd"])
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--momentum", type=float, default=0.9, help="SGD only")
    g.add_argument("--weight-decay", "--wd", type=float, default=0.05)
    g.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "plateau", "none"])
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up (cosine only)")
    g.add_argument("--min-lr-factor", type=float, default=0.01, help="cosine floor as a fraction of --lr")
    g.add_argument("--plateau-factor", type=float, default=0.3)
    g.add_argument("--plateau-patience", type=int, default=3)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument(
        "--class-weights",
        default="none",
        choices=["none", "sqrt_inverse", "inverse"],
        help="weight the loss by inverse (sqrt) class frequency; helps the rare Disgust class",
    )
    g.add_argument(
        "--oversample",
        default="none",
        choices=["none", "sqrt_inverse", "inverse"],
        help="sample Training rows with replacement by inverse (sqrt) class frequency",
    )
    g.add_argument(
        "--model-ema-decay",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the weights (and BatchNorm statistics), updated every step "
        "with this decay, e.g. 0.999; it is what PublicTest selects, PrivateTest scores and the model file holds "
        "(0 = off)",
    )
    g.add_argument("--patience", type=int, default=0, help="early stop after N epochs without improvement (0 = off)")
    g.add_argument("--select-metric", default="accuracy", choices=SELECT_METRICS, help="PublicTest model selection")

    g = p.add_argument_group("augmentation")
    g.add_argument("--hflip", type=float, default=0.5, help="probability")
    g.add_argument("--shift", type=float, default=0.1, help="max translation, fraction of the side")
    g.add_argument("--scale", type=float, default=0.1, help="max zoom in/out")
    g.add_argument("--rotate", type=float, default=10.0, help="max rotation, degrees")
    g.add_argument("--brightness", type=float, default=0.2)
    g.add_argument("--contrast", type=float, default=0.2)
    g.add_argument("--erase", type=float, default=0.25, help="random-erasing probability")
    g.add_argument("--mixup-alpha", type=float, default=0.0, help="mixup Beta(a, a) on the batch (0 = off)")
    g.add_argument("--cutmix-alpha", type=float, default=0.0, help="CutMix Beta(a, a) on the batch (0 = off)")
    g.add_argument(
        "--mix-prob", type=float, default=1.0, help="chance that a batch is mixed (mixup or CutMix, one at random)"
    )
    g.add_argument(
        "--ferplus-soft",
        type=float,
        default=0.0,
        metavar="W",
        help="share W of each Training target taken from the row's FER+ vote shares (fer2013new.csv, see "
        "--ferplus-csv), the rest from its label; mixup/CutMix then mix these targets (0 = off)",
    )
    g.add_argument(
        "--served-crops",
        default=None,
        metavar="FILE",
        help="Training faces as the served detector crops them (python -m training served-crops); each image "
        "is replaced by its served crop with probability --served-prob",
    )
    g.add_argument("--served-prob", type=float, default=0.5, help="see --served-crops")
    g.add_argument(
        "--fake-quant",
        action="store_true",
        help="round activations in training forwards as the int8 export does (training/fake_quant.py): a "
        "fine-tune for a model whose int8 copy changes its top class too often",
    )
    g.add_argument("--mean", type=float, default=presets.DEFAULT_MEAN, help="normalisation mean (pixel/255)")
    g.add_argument("--std", type=float, default=presets.DEFAULT_STD, help="normalisation std (pixel/255)")

    g = p.add_argument_group("distillation")
    g.add_argument(
        "--teacher",
        default=None,
        help="model file (one network or an ensemble) whose softened outputs the student also learns from",
    )
    g.add_argument("--distill-weight", type=float, default=0.5, help="share of the loss given to the teacher")
    g.add_argument("--distill-temperature", type=float, default=4.0, help="softening temperature (Hinton et al.)")
    g.add_argument(
        "--teacher-tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation of the teacher's logits (multicrop: ten shifted and mirrored views)",
    )
    g.add_argument(
        "--teacher-view",
        default="same",
        choices=("same", "original"),
        help="what the teacher sees: the student's images (same), or, for a face the student sees as its served "
        "crop (--served-crops), the face's own data-set crop under the same augmentation and mixing "
        "(original): the student learns to read a served crop as the teacher reads the face as it was framed",
    )

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype")
    g.add_argument(
        "--memory-format",
        default="auto",
        choices=["auto", *presets.MEMORY_FORMATS],
        help="of the weights and batches while training (auto: channels-last under 16-bit autocast, else "
        "contiguous); float32 convolutions are faster channels-last on some CPUs (AVX-512) and contiguous on "
        "others (AVX2): measure on yours (training/README.md)",
    )
    g.add_argument(
        "-j",
        "--workers",
        type=int,
        default=0,
        help="CPU threads for torch (0: the usable CPUs, affinity and cgroup quota); batches are built in-process, "
        "no DataLoader",
    )
    g.add_argument("--eval-batch-size", type=int, default=256)
    g.add_argument("--ece-bins", type=int, default=15, help="equal-width confidence bins for ECE")
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="checkpoint to resume from; without a value, OUT/checkpoint.pt",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar (summary lines only)")
    return p


def _option_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help", "config")}


def _config_value(parser: argparse.ArgumentParser, dest: str, value: Any) -> Any:
    """Check a YAML value like argparse checks a flag (set_defaults alone checks neither type nor choices)."""
    action = next(a for a in parser._actions if a.dest == dest)
    convert = action.type
    if callable(convert) and value is not None:
        try:
            # Through str so that int("2.5") fails instead of int(2.5) silently truncating.
            value = convert(str(value))
        except (TypeError, ValueError):
            parser.error(f"config key {dest}: {value!r} is not a valid {getattr(action.type, '__name__', 'value')}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"config key {dest}: {value!r} is not one of {list(action.choices)}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags; a YAML ``--config`` replaces defaults, explicit flags still win (timm style)."""
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        try:
            with open(pre.config) as fh:
                cfg = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            parser.error(f"cannot read config {pre.config}: {exc}")
        if not isinstance(cfg, dict):
            parser.error(f"config {pre.config} must be a mapping of option names to values")
        cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
        unknown = sorted(k for k in cfg if k not in _option_dests(parser))
        if unknown:
            parser.error(f"unknown key(s) in config {pre.config}: {', '.join(unknown)}")
        parser.set_defaults(**{k: _config_value(parser, k, v) for k, v in cfg.items()})
    args = parser.parse_args(argv)
    for required in ("data", "out"):
        if not getattr(args, required):
            parser.error(f"--{required} is required (on the command line or in --config)")
    if args.teacher_view == "original" and not (args.teacher and args.served_crops):
        parser.error("--teacher-view original needs --teacher and --served-crops (what else would differ?)")
    if args.fake_quant and not args.arch.startswith("resnet_fer"):
        parser.error(f"--fake-quant knows the resnet_fer architectures' layout, not --arch {args.arch}")
    # Checked before the data loads: a wrong number should not cost the load, or read as another error.
    for dest, low, high in _RANGES:
        value = getattr(args, dest)
        if not low <= value <= high:
            flag = "--" + dest.replace("_", "-")
            parser.error(f"{flag} {value} is out of range: it must be in [{low}, {high}]")
    return args


#: Options whose values have bounds, with their inclusive limits.
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("epochs", 1, 100_000),
    ("batch_size", 2, 1_000_000),
    ("lr", 0.0, 10.0),
    ("dropout", 0.0, 1.0),
    ("label_smoothing", 0.0, 1.0),
    ("mix_prob", 0.0, 1.0),
    ("ferplus_soft", 0.0, 1.0),
    ("served_prob", 0.0, 1.0),
    ("distill_weight", 0.0, 1.0),
    ("model_ema_decay", 0.0, 1.0),
    ("train_limit", 0, 10**9),
    ("workers", 0, 4096),
)
