"""Train the emotion classifier on FER2013 (``python -m training [train] --data ... --out DIR``).

Laid out like torchvision's references/classification/train.py: flat ``train_one_epoch``,
``evaluate`` and ``main(args)``, one checkpoint dict per epoch (``--resume``). Defaults live in the
argparse groups; a YAML ``--config`` overrides them and explicit flags override the YAML.

Protocol: fit on Training, pick the epoch with the best PublicTest score, fit the softmax temperature
on PublicTest logits of the picked weights (stored in the model file), evaluate PrivateTest once, at
the end. Data: a FER2013 CSV or an image folder with splits (see ``training.data``), labels from the
CSV or the FER+ majority vote (``--labels ferplus``). Outputs in ``--out``: model.pt2
(emostream.modelfile), report.json, training_curves.png, confusion_privatetest.png,
reliability_privatetest.png, checkpoint.pt.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from emostream.cpu import cpu_info
from emostream.modelfile import TTA_MODES, ModelFileError, ModelInfo, forward_with_tta, load_model, save_model
from emostream.wire import EMOTIONS
from training import presets
from training.data import LABEL_SOURCES, DataError, Split, load_dataset
from training.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    plot_confusion,
    plot_reliability,
    plot_training_curves,
    reliability_bins,
    softmax,
)
from training.models import ARCHS, build_model

CHECKPOINT = "checkpoint.pt"
SELECT_METRICS = ("accuracy", "macro_f1")


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training [train]",
        description="Train the FER2013 emotion classifier and write an emostream model file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-c", "--config", default=None, help="YAML file of defaults (keys = option names)")

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=None,
        help="fer2013.csv(.gz) or an image folder <root>/<split>/<class>/*.png with Training/PublicTest/"
        "PrivateTest (or train/val/test) splits (required)",
    )
    g.add_argument(
        "--labels",
        default="fer2013",
        choices=LABEL_SOURCES,
        help="fer2013: the CSV's emotion column; ferplus: FER+ majority vote from --ferplus-csv (CSV only)",
    )
    g.add_argument("--ferplus-csv", default=None, help="fer2013new.csv; None = the one next to --data")
    g.add_argument(
        "--strict", action="store_true", help="make a bad row/image an error, instead of a counted and warned skip"
    )
    g.add_argument("--out", default=None, help="output directory (required)")
    g.add_argument("--train-limit", type=int, default=0, help="use only the first N Training rows (0 = all)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet_fer", choices=sorted(ARCHS))
    g.add_argument("--dropout", type=float, default=0.3, help="dropout before the classifier layer")

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

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype")
    g.add_argument(
        "-j",
        "--workers",
        type=int,
        default=0,
        help="CPU threads for torch (0 = torch default); batches are built in-process, no DataLoader",
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
    if action.type is not None and value is not None:
        try:
            # Through str so that int("2.5") fails instead of int(2.5) silently truncating.
            value = action.type(str(value))
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
    return args


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA where supported and on CPUs with native bf16, else fp32 (None); fp16 only when asked."""
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_info().native_bf16 else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def memory_format(amp_dtype: torch.dtype | None) -> torch.memory_format:
    """channels-last where the convolutions run in 16 bits (AMX, tensor cores); plain float32 CPU
    convolutions (oneDNN on AVX2) run faster on contiguous tensors."""
    return torch.channels_last if amp_dtype is not None else torch.contiguous_format


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target term: T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def class_weights(counts: Sequence[int], mode: str) -> torch.Tensor | None:
    """Inverse (or sqrt-inverse) frequency weights normalised to mean 1 over samples; None for 'none'."""
    if mode == "none":
        return None
    freq = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    w = 1.0 / freq if mode == "inverse" else 1.0 / freq.sqrt()
    w = w / (w * freq).sum() * freq.sum()
    return w.float()


def epoch_order(split: Split, epoch: int, seed: int, oversample: str) -> torch.Tensor:
    """Training row order for ``epoch``: depends only on (seed, epoch), so a resumed run is identical."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(split)
    if oversample == "none":
        return torch.randperm(n, generator=g)
    w = class_weights(split.class_counts(), oversample)
    assert w is not None
    return torch.multinomial(w[split.labels].double(), n, replacement=True, generator=g)


def make_lr_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    if args.lr_scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=args.plateau_factor, patience=args.plateau_patience
        )
    if args.lr_scheduler == "none":
        return None
    total = max(1, args.epochs * steps_per_epoch)
    warmup = int(args.warmup_epochs * steps_per_epoch)
    floor = args.min_lr_factor

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# Train / evaluate
# ---------------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    order: torch.Tensor,
    transform: presets.TrainPreset,
    device: torch.device,
    epoch: int,
    args: argparse.Namespace,
    amp_dtype: torch.dtype | None,
    lr_scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    model_ema: AveragedModel | None = None,
    mixer: presets.MixupCutmix | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, float]:
    """One pass over ``order`` (drop_last: a batch of 1 would break BatchNorm). Returns loss/acc/lr.

    ``model_ema``: averaged after every optimizer step. ``mixer``: mixup/CutMix on each batch, the
    loss then takes soft targets. ``teacher``: its logits (under ``args.teacher_tta``) on the same,
    augmented and mixed, images add ``args.distill_weight`` of :func:`distillation_loss`."""
    model.train()
    g = torch.Generator().manual_seed(args.seed * 100_003 + epoch + 7_919)  # augmentation randomness
    bs = args.batch_size
    steps = len(order) // bs
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{args.epochs}",
        unit="step",
        leave=False,
        disable=args.no_progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    for step in bar:
        idx = order[step * bs : (step + 1) * bs]
        images = transform(split.images[idx], generator=g)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format(amp_dtype))
        target = split.labels[idx].to(device, non_blocking=True)
        soft_target = None
        if mixer is not None and mixer.enabled:
            images, soft_target = mixer(images, target, generator=g)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad(), autocast(device, amp_dtype):
                teacher_logits = forward_with_tta(teacher, images, args.teacher_tta).float()
        with autocast(device, amp_dtype):
            output = model(images)
            loss = criterion(output.float(), target if soft_target is None else soft_target)
            if teacher_logits is not None:
                soft = distillation_loss(output, teacher_logits, args.distill_temperature)
                loss = (1.0 - args.distill_weight) * loss + args.distill_weight * soft
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if model_ema is not None:
            model_ema.update_parameters(model)
        # Per-step schedules only; ReduceLROnPlateau (an LRScheduler subclass too) steps once per epoch.
        if lr_scheduler is not None and not isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            lr_scheduler.step()
        total_loss += loss.detach().double().cpu() * len(idx)
        # A mixed image counts as right when the argmax is the label with the larger share.
        hard = target if soft_target is None else soft_target.argmax(1)
        correct += (output.argmax(1) == hard).sum().cpu()
        seen += len(idx)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    bar.close()
    return {
        "loss": total_loss.item() / max(seen, 1),
        "acc": correct.item() / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    transform: presets.EvalPreset,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int = 256,
    tta: str = "none",
) -> torch.Tensor:
    """Float32 logits (N, C) on CPU, under test-time augmentation ``tta`` as the classifier serves it."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        images = transform(split.images[start : start + batch_size]).to(device)
        images = images.contiguous(memory_format=memory_format(amp_dtype))
        with autocast(device, amp_dtype):
            out.append(forward_with_tta(model, images, tta).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(EMOTIONS))


def evaluate(
    model: nn.Module,
    split: Split,
    transform: presets.EvalPreset,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int = 256,
    tta: str = "none",
) -> dict[str, Any]:
    """Loss (plain cross-entropy) plus ``classification_metrics``; ``preds`` the argmax, ``logits`` the logits."""
    logits = predict(model, split, transform, device, amp_dtype, batch_size, tta)
    preds = logits.argmax(1)
    result = classification_metrics(split.labels.numpy(), preds.numpy(), EMOTIONS)
    result["loss"] = float(F.cross_entropy(logits, split.labels)) if len(split) else float("nan")
    result["preds"] = preds
    result["logits"] = logits
    return result


def calibrate(
    final: dict[str, dict[str, Any]], splits: dict[str, Split], n_bins: int
) -> tuple[float, dict[str, Any], dict[str, dict[str, dict[str, list[float]]]]]:
    """Fit the temperature on PublicTest logits; ECE/NLL before and after on every evaluated split.

    Returns (temperature, JSON summary, reliability bins per split for the diagram).
    """
    val_logits = final["PublicTest"]["logits"].double().numpy()
    temperature = fit_temperature(val_logits, splits["PublicTest"].labels.numpy())
    summary: dict[str, Any] = {"temperature": temperature, "fit_split": "PublicTest", "n_bins": n_bins}
    bins: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, m in final.items():
        logits, labels = m["logits"].double().numpy(), splits[name].labels.numpy()
        raw, scaled = softmax(logits), softmax(logits, temperature)
        summary[name] = {
            "ece_raw": expected_calibration_error(raw, labels, n_bins),
            "ece_calibrated": expected_calibration_error(scaled, labels, n_bins),
            "nll_raw": negative_log_likelihood(logits, labels),
            "nll_calibrated": negative_log_likelihood(logits, labels, temperature),
        }
        bins[name] = {
            "raw": reliability_bins(raw, labels, n_bins),
            "calibrated": reliability_bins(scaled, labels, n_bins),
        }
    return temperature, summary, bins


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("preds", "logits")}


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def load_teacher(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The ``--teacher`` model file's network; it must see the student's inputs and name its classes."""
    try:
        teacher, info = load_model(args.teacher, device=str(device))
    except ModelFileError as exc:
        raise SystemExit(f"error: --teacher: {exc}") from exc
    if list(info.class_names) != list(EMOTIONS):
        raise SystemExit(f"error: --teacher {args.teacher} has classes {info.class_names}, not {list(EMOTIONS)}")
    if tuple(info.input_size) != (48, 48) or (info.mean, info.std) != (args.mean, args.std):
        raise SystemExit(
            f"error: --teacher {args.teacher} takes {list(info.input_size)} inputs normalised with mean "
            f"{info.mean} std {info.std}; the student uses [48, 48], mean {args.mean} std {args.std}"
        )
    print(f"teacher: {args.teacher} ({info.arch}), tta {args.teacher_tta}", flush=True)
    return teacher


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select on PublicTest, evaluate PrivateTest once, write the model file and report."""
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.workers > 0:
        torch.set_num_threads(args.workers)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    config = _json_safe(vars(args))

    t0 = time.perf_counter()
    data = load_dataset(args.data, labels=args.labels, ferplus_csv=args.ferplus_csv, strict=args.strict)
    missing = [s for s in ("Training", "PublicTest", "PrivateTest") if s not in data.splits]
    if missing:
        raise DataError(f"{data.path} ({data.layout}) has no {missing} split(s): training needs all three")
    train_split, val_split, test_split = (data.splits[s] for s in ("Training", "PublicTest", "PrivateTest"))
    if args.train_limit:
        train_split = Split(train_split.images[: args.train_limit], train_split.labels[: args.train_limit])
    if len(train_split) < args.batch_size:
        raise DataError(f"{len(train_split)} Training rows are fewer than one batch of {args.batch_size}")
    if not len(val_split) or not len(test_split):
        raise DataError("the data needs PublicTest and PrivateTest rows (Usage column, or val/test folders)")
    load_s = time.perf_counter() - t0
    print(
        f"data: {data.path} sha256 {data.sha256[:12]}... Training {len(train_split)} PublicTest "
        f"{len(val_split)} PrivateTest {len(test_split)} skipped {data.skipped_rows} "
        f"dropped by label rule {sum(data.dropped.values())} (labels {data.labels}, {load_s:.1f}s)",
        flush=True,
    )

    model = build_model(args.arch, len(EMOTIONS), args.dropout).to(device, memory_format=memory_format(amp_dtype))
    n_params = sum(p.numel() for p in model.parameters())
    weights = class_weights(train_split.class_counts(), args.class_weights)
    criterion = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), label_smoothing=args.label_smoothing
    )
    # No weight decay on BatchNorm and biases (standard practice; decaying BN gains hurts small nets).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = len(train_split) // args.batch_size
    lr_scheduler = make_lr_scheduler(args, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    model_ema = None
    if args.model_ema_decay > 0:
        model_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.model_ema_decay), use_buffers=True)
    # The weights PublicTest selects and the model file holds: the average when there is one.
    scored = model if model_ema is None else model_ema.module
    train_tf = presets.TrainPreset(
        args.mean, args.std, args.hflip, args.shift, args.scale, args.rotate, args.brightness, args.contrast, args.erase
    )
    eval_tf = presets.EvalPreset(args.mean, args.std)
    mixer = presets.MixupCutmix(len(EMOTIONS), args.mixup_alpha, args.cutmix_alpha, args.mix_prob)
    teacher = load_teacher(args, device) if args.teacher else None

    start_epoch = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -1.0, "epoch": -1, "state": None}
    if args.resume:
        path = out / CHECKPOINT if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            raise SystemExit(f"error: cannot resume: checkpoint {path} does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["args"]["arch"] != args.arch:
            raise SystemExit(f"checkpoint {path} is a {ckpt['args']['arch']}, not {args.arch}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if lr_scheduler is not None and ckpt.get("lr_scheduler") is not None:
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        if model_ema is not None:
            if ckpt.get("model_ema") is None:
                raise SystemExit(f"checkpoint {path} has no weight average: resume without --model-ema-decay")
            model_ema.load_state_dict(ckpt["model_ema"])
        start_epoch = ckpt["epoch"] + 1
        history = ckpt["history"]
        best = ckpt["best"]
        print(f"resumed from {path} after epoch {start_epoch} (best epoch {best['epoch'] + 1})", flush=True)

    print(
        f"model: {args.arch} {n_params / 1e6:.2f}M params, device {device}, amp {amp_dtype}, "
        f"threads {torch.get_num_threads()}, {steps_per_epoch} steps/epoch",
        flush=True,
    )
    stale = start_epoch - 1 - best["epoch"] if best["epoch"] >= 0 else 0  # epochs since the best one
    train_s = 0.0
    for epoch in range(start_epoch, args.epochs):
        if args.patience and stale >= args.patience:
            print(f"early stop: no PublicTest improvement for {stale} epochs", flush=True)
            break
        t_epoch = time.perf_counter()
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout randomness, reproducible on resume
        order = epoch_order(train_split, epoch, args.seed, args.oversample)
        train_stats = train_one_epoch(
            model,
            criterion,
            optimizer,
            train_split,
            order,
            train_tf,
            device,
            epoch,
            args,
            amp_dtype,
            lr_scheduler,
            scaler,
            model_ema,
            mixer,
            teacher,
        )
        val = evaluate(scored, val_split, eval_tf, device, amp_dtype, args.eval_batch_size)
        score = val["accuracy"] if args.select_metric == "accuracy" else val["macro_f1"]
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            lr_scheduler.step(score)
        improved = score > best["score"]
        if improved:
            best = {"score": score, "epoch": epoch, "state": copy.deepcopy(scored.state_dict())}
            stale = 0
        else:
            stale += 1
        seconds = time.perf_counter() - t_epoch
        train_s += seconds
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_stats["loss"],
                "train_acc": train_stats["acc"],
                "val_loss": val["loss"],
                "val_acc": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "lr": train_stats["lr"],
                "seconds": seconds,
            }
        )
        print(
            f"epoch {epoch + 1:3d}/{args.epochs} train loss {train_stats['loss']:.4f} acc {train_stats['acc']:.4f} | "
            f"PublicTest loss {val['loss']:.4f} acc {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f} | "
            f"lr {train_stats['lr']:.2e} {seconds:.0f}s{' *best' if improved else ''}",
            flush=True,
        )
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": None if lr_scheduler is None else lr_scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "model_ema": None if model_ema is None else model_ema.state_dict(),
            "epoch": epoch,
            "args": config,
            "history": history,
            "best": best,
        }
        # Write then rename: an interrupted save never leaves a truncated checkpoint behind.
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, out / CHECKPOINT)

    if best["state"] is None:
        raise SystemExit("no epoch was trained (epochs <= resumed epoch?)")
    model.load_state_dict(best["state"])
    model = model.to(memory_format=torch.contiguous_format)
    # The selected weights, fp32: the numbers the model file reproduces. PrivateTest is touched here only.
    t_eval = time.perf_counter()
    eval_splits = {"PublicTest": val_split, "PrivateTest": test_split}
    final = {
        name: evaluate(model, split, eval_tf, device, None, args.eval_batch_size) for name, split in eval_splits.items()
    }
    # Serving runs bf16 autocast: how often its argmax matches fp32 on the same images.
    bf16_agreement = {}
    for name, split in eval_splits.items():
        low = predict(model, split, eval_tf, device, torch.bfloat16, args.eval_batch_size).argmax(1)
        bf16_agreement[name] = float((low == final[name]["preds"]).float().mean())
    # Temperature scaling on PublicTest (the selection split; PrivateTest stays untouched until here).
    temperature, calibration, reliability = calibrate(final, eval_splits, args.ece_bins)
    # The flip-TTA recipe (classifier.tta: flip): its scores, and its own temperature fitted on its
    # own PublicTest logits (averaged logits are less extreme than single-pass ones).
    final_flip = {
        name: evaluate(model, split, eval_tf, device, None, args.eval_batch_size, tta="flip")
        for name, split in eval_splits.items()
    }
    temperature_flip, calibration_flip, _ = calibrate(final_flip, eval_splits, args.ece_bins)
    eval_s = time.perf_counter() - t_eval
    for name, m in final.items():
        print(f"final {name}: acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} loss {m['loss']:.4f}", flush=True)
    print(
        f"calibration: temperature {temperature:.3f} (fit on PublicTest); ECE "
        + ", ".join(f"{n} {calibration[n]['ece_raw']:.4f} -> {calibration[n]['ece_calibrated']:.4f}" for n in final),
        flush=True,
    )
    print(
        "flip TTA: "
        + ", ".join(f"{n} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}" for n, m in final_flip.items())
        + f"; temperature {temperature_flip:.3f}",
        flush=True,
    )

    data_info = {
        **data.summary(),
        "skipped_rows": data.skipped_rows,
        "counts": {"Training": len(train_split), "PublicTest": len(val_split), "PrivateTest": len(test_split)},
    }
    metrics = {
        name: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "loss": m["loss"], "n": m["n"]}
        for name, m in final.items()
    }
    for name in final:
        metrics[name]["ece_raw"] = calibration[name]["ece_raw"]
        metrics[name]["ece_calibrated"] = calibration[name]["ece_calibrated"]
    metrics["best_epoch"] = best["epoch"] + 1
    metrics["select_metric"] = args.select_metric
    metrics["calibration"] = calibration
    metrics["tta_flip"] = {n: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]} for n, m in final_flip.items()}
    metrics["calibration_flip"] = calibration_flip
    info = ModelInfo(
        arch=args.arch,
        class_names=list(EMOTIONS),
        input_size=(48, 48),
        mean=args.mean,
        std=args.std,
        temperature=temperature,
        tta_temperatures={"flip": temperature_flip},
        data_sha256=data.sha256,
        metrics=metrics,
        # history: lets `python -m training evaluate --out` draw the training curves from the file alone.
        extra={
            "config": config,
            "params": n_params,
            "torch": torch.__version__,
            "labels": data.labels,
            "labels_sha256": data.labels_sha256,
            "history": history,
        },
    )
    model_path = save_model(model.cpu(), info, out / "model.pt2")

    report = {
        "model_file": model_path.name,
        "arch": args.arch,
        "params": n_params,
        "class_names": list(EMOTIONS),
        "best_epoch": best["epoch"] + 1,
        "select_metric": args.select_metric,
        "epochs_run": len(history),
        "PublicTest": _summary(final["PublicTest"]),
        "PrivateTest": _summary(final["PrivateTest"]),
        "bf16_argmax_agreement": bf16_agreement,
        "calibration": calibration,
        "tta_flip": {name: _summary(m) for name, m in final_flip.items()},
        "calibration_flip": calibration_flip,
        "history": history,
        "config": config,
        "data": data_info,
        "timing": {
            "data_load_s": load_s,
            "train_s_this_run": train_s,
            "train_s_all_epochs": sum(h["seconds"] for h in history),
            "mean_epoch_s": sum(h["seconds"] for h in history) / max(1, len(history)),
            "final_eval_s": eval_s,
            "total_s_this_run": time.perf_counter() - t_start,
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "amp": str(amp_dtype),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    (out / "report.json").write_text(json.dumps(_json_safe(report), indent=1))
    plot_training_curves(history, out / "training_curves.png")
    plot_confusion(
        final["PrivateTest"]["confusion_matrix"],
        EMOTIONS,
        out / "confusion_privatetest.png",
        f"PrivateTest ({args.arch}, epoch {best['epoch'] + 1}): acc {final['PrivateTest']['accuracy']:.3f}",
    )
    plot_reliability(
        {
            f"raw (ECE {calibration['PrivateTest']['ece_raw']:.3f})": reliability["PrivateTest"]["raw"],
            f"T={temperature:.2f} (ECE {calibration['PrivateTest']['ece_calibrated']:.3f})": reliability["PrivateTest"][
                "calibrated"
            ],
        },
        out / "reliability_privatetest.png",
        f"PrivateTest ({args.arch}), temperature fit on PublicTest",
    )
    print(
        f"wrote {model_path}, report.json, training_curves.png, confusion_privatetest.png, "
        f"reliability_privatetest.png in {out}",
        flush=True,
    )
    return report


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        main(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
