"""Train the emotion classifier on FER2013 (``python -m training [train] --data ... --out DIR``).

Laid out like torchvision's references/classification/train.py, as flat steps: ``main(args)`` loads
the data, builds the :class:`Trainer`, resumes, then ``fit`` (the epoch loop of ``train_one_epoch`` and
``evaluate``, selection, one checkpoint dict per epoch for ``--resume``), ``finalize`` (final scores,
calibrations, the model file) and ``write_report``. The options are in :mod:`training.train_args`.

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
import dataclasses
import json
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from emostream.cpu import cpu_info, thread_budget
from emostream.jsonutil import json_ready
from emostream.modelfile import forward_with_tta, load_model, save_model
from emostream.modelinfo import ModelFileError, ModelInfo
from emostream.wire import EMOTIONS
from training import presets
from training.cli_support import run_subcommand
from training.data import SPLITS, DataError, Fer2013, Split, load_dataset
from training.fake_quant import add_activation_fake_quant
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
from training.models import build_model
from training.served_crops import load_served_crops
from training.train_args import parse_args

CHECKPOINT = "checkpoint.pt"
EVAL_SPLITS = ("PublicTest", "PrivateTest")  # selection, then the held-out split scored once


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


def memory_format(choice: str, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """``--memory-format``: ``auto`` is channels-last where the convolutions run in 16 bits (AMX, tensor
    cores) and contiguous in float32, where which is faster depends on the CPU (oneDNN: contiguous on
    AVX2, channels-last on AVX-512; training/README.md), so a float32 run may choose."""
    if choice == "auto":
        return torch.channels_last if amp_dtype is not None else torch.contiguous_format
    return presets.MEMORY_FORMATS[choice]


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
# What the steps share
# ---------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """The data set, its three splits (``--train-limit`` applied) and how long loading took."""

    data: Fer2013
    splits: dict[str, Split]
    seconds: float


@dataclass(frozen=True)
class Evaluator:
    """How a split is scored: the eval transform, the device, the autocast dtype (None = float32), the batch."""

    transform: presets.EvalPreset
    device: torch.device
    amp_dtype: torch.dtype | None
    batch_size: int = 256
    memory_format: torch.memory_format = torch.contiguous_format

    def with_amp(self, amp_dtype: torch.dtype | None) -> Evaluator:
        """This evaluator in ``amp_dtype``, in the memory format ``auto`` gives it (as served)."""
        return dataclasses.replace(self, amp_dtype=amp_dtype, memory_format=memory_format("auto", amp_dtype))


@dataclass
class Trainer:
    """What the epoch loop updates and the checkpoint holds, and how its batches are made."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # LambdaLR, ReduceLROnPlateau or None (--lr-scheduler)
    scaler: torch.amp.GradScaler | None
    model_ema: AveragedModel | None
    transform: presets.TrainPreset
    mixer: presets.MixupCutmix
    teacher: nn.Module | None
    steps_per_epoch: int
    #: Of the model's weights and every batch (--memory-format).
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def scored(self) -> nn.Module:
        """The weights PublicTest selects and the model file holds: the average when there is one."""
        return self.model if self.model_ema is None else self.model_ema.module


@dataclass
class Progress:
    """Where the epoch loop stands; all of it but ``train_s`` is in the checkpoint."""

    epoch: int = -1  # the last finished epoch, 0-based
    history: list[dict[str, Any]] = field(default_factory=list)
    # {"score", "epoch", "state"}: a dict, as the checkpoints of earlier versions hold it.
    best: dict[str, Any] = field(default_factory=lambda: {"score": -1.0, "epoch": -1, "state": None})
    train_s: float = 0.0  # this run's epochs only


@dataclass
class Final:
    """The selected weights' scores (fp32, single pass and flip TTA) and their two calibrations."""

    scores: dict[str, dict[str, Any]]
    flip: dict[str, dict[str, Any]]
    bf16_agreement: dict[str, float]
    temperature: float
    calibration: dict[str, Any]
    reliability: dict[str, dict[str, dict[str, list[float]]]]
    temperature_flip: float
    calibration_flip: dict[str, Any]
    params: int
    seconds: float
    model_path: Path | None = None


def load_splits(args: argparse.Namespace) -> Loaded:
    t0 = time.perf_counter()
    data = load_dataset(
        args.data,
        labels=args.labels,
        ferplus_csv=args.ferplus_csv,
        strict=args.strict,
        ferplus_votes=args.ferplus_soft > 0,
    )
    missing = [s for s in SPLITS if s not in data.splits]
    if missing:
        raise DataError(f"{data.path} ({data.layout}) has no {missing} split(s): training needs all three")
    splits = {name: data.splits[name] for name in SPLITS}
    if args.served_crops:
        train = splits["Training"]
        crops, found = load_served_crops(args.served_crops, "Training", len(train), data.sha256)
        served = torch.where(
            torch.from_numpy(found)[:, None, None, None], torch.from_numpy(crops)[:, None], train.images
        )
        splits["Training"] = dataclasses.replace(train, served=served)
        print(
            f"served crops: {args.served_crops}, {int(found.sum())} of {len(found)} faces, "
            f"each used with probability {args.served_prob:g}",
            flush=True,
        )
    if args.train_limit:
        train, n = splits["Training"], args.train_limit
        splits["Training"] = Split(
            train.images[:n],
            train.labels[:n],
            None if train.votes is None else train.votes[:n],
            None if train.served is None else train.served[:n],
        )
    if len(splits["Training"]) < args.batch_size:
        raise DataError(f"{len(splits['Training'])} Training rows are fewer than one batch of {args.batch_size}")
    if not len(splits["PublicTest"]) or not len(splits["PrivateTest"]):
        raise DataError("the data needs PublicTest and PrivateTest rows (Usage column, or val/test folders)")
    loaded = Loaded(data, splits, time.perf_counter() - t0)
    print(
        f"data: {data.path} sha256 {data.sha256[:12]}... "
        + " ".join(f"{name} {len(split)}" for name, split in splits.items())
        + f" skipped {data.skipped_rows} dropped by label rule {sum(data.dropped.values())} "
        f"(labels {data.labels}, {loaded.seconds:.1f}s)",
        flush=True,
    )
    votes = splits["Training"].votes
    if votes is not None:
        with_votes = int((votes.sum(dim=1) > 0).sum())
        print(
            f"targets: {args.ferplus_soft:g} from FER+ vote shares ({data.labels_path}), "
            f"{with_votes} of {len(votes)} Training rows have votes",
            flush=True,
        )
    return loaded


def build_trainer(
    args: argparse.Namespace, train_split: Split, device: torch.device, amp_dtype: torch.dtype | None
) -> Trainer:
    model = build_model(args.arch, len(EMOTIONS), args.dropout)
    if args.init_from:
        init_weights(model, args.init_from)
    fmt = memory_format(args.memory_format, amp_dtype)
    # Module.to takes memory_format at run time; torch's overloads of it leave the keyword out.
    model = model.to(device, memory_format=fmt)  # type: ignore[call-overload]
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
    model_ema = None
    if args.model_ema_decay > 0:
        model_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.model_ema_decay), use_buffers=True)
    if args.fake_quant:  # after the average's copy: it is scored, and scoring stays float32
        add_activation_fake_quant(model)
    return Trainer(
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        lr_scheduler=make_lr_scheduler(args, optimizer, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        model_ema=model_ema,
        transform=presets.TrainPreset(
            args.mean,
            args.std,
            args.hflip,
            args.shift,
            args.scale,
            args.rotate,
            args.brightness,
            args.contrast,
            args.erase,
        ),
        mixer=presets.MixupCutmix(len(EMOTIONS), args.mixup_alpha, args.cutmix_alpha, args.mix_prob),
        teacher=load_teacher(args, device) if args.teacher else None,
        steps_per_epoch=steps_per_epoch,
        memory_format=fmt,
    )


def init_weights(model: nn.Module, path: str) -> None:
    """Copy a model file's weights (and BatchNorm statistics) into ``model``: they must match name for name."""
    try:
        source, info = load_model(path)
    except ModelFileError as exc:
        raise SystemExit(f"error: --init-from: {exc}") from exc
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SystemExit(f"error: --init-from {path} ({info.arch}) does not fit --arch: {first}") from exc
    print(f"init: weights from {path} ({info.arch})", flush=True)


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


# ---------------------------------------------------------------------------------------------
# Checkpoint: one dict, written by checkpoint_state and read by restore_checkpoint
# ---------------------------------------------------------------------------------------------


def checkpoint_state(trainer: Trainer, progress: Progress, args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint after epoch ``progress.epoch``. Its keys are those of every earlier version (a run
    started by one resumes with the next); a key added later must be read with ``.get``."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": None if trainer.lr_scheduler is None else trainer.lr_scheduler.state_dict(),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "model_ema": None if trainer.model_ema is None else trainer.model_ema.state_dict(),
        "epoch": progress.epoch,
        "args": json_ready(vars(args)),
        "history": progress.history,
        "best": progress.best,
    }


def save_checkpoint(checkpoint: dict[str, Any], out: Path) -> None:
    # Write then rename: an interrupted save never leaves a truncated checkpoint behind.
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out / CHECKPOINT)


def resume_path(args: argparse.Namespace) -> Path:
    """``--resume`` as a path (without a value: OUT/checkpoint.pt); it must exist."""
    path = Path(args.out) / CHECKPOINT if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise SystemExit(f"error: cannot resume: checkpoint {path} does not exist")
    return path


def restore_checkpoint(path: Path, trainer: Trainer, args: argparse.Namespace) -> Progress:
    """Load ``path`` into ``trainer``; the progress it records."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["args"]["arch"] != args.arch:
        raise SystemExit(f"checkpoint {path} is a {ckpt['args']['arch']}, not {args.arch}")
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if trainer.lr_scheduler is not None and ckpt.get("lr_scheduler") is not None:
        trainer.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if trainer.scaler is not None and ckpt.get("scaler") is not None:
        trainer.scaler.load_state_dict(ckpt["scaler"])
    if trainer.model_ema is not None:
        if ckpt.get("model_ema") is None:
            raise SystemExit(f"checkpoint {path} has no weight average: resume without --model-ema-decay")
        trainer.model_ema.load_state_dict(ckpt["model_ema"])
    progress = Progress(epoch=ckpt["epoch"], history=ckpt["history"], best=ckpt["best"])
    print(f"resumed from {path} after epoch {progress.epoch + 1} (best epoch {progress.best['epoch'] + 1})", flush=True)
    return progress


# ---------------------------------------------------------------------------------------------
# Train / evaluate
# ---------------------------------------------------------------------------------------------


def blend_votes(labels: torch.Tensor, votes: torch.Tensor, weight: float) -> torch.Tensor:
    """Targets ``(1 - weight) * onehot(label) + weight * votes``; a row without votes keeps its one-hot."""
    onehot = F.one_hot(labels, votes.shape[1]).to(votes.dtype)
    has_votes = votes.sum(dim=1, keepdim=True) > 0
    return torch.where(has_votes, (1.0 - weight) * onehot + weight * votes, onehot)


def train_one_epoch(
    trainer: Trainer,
    split: Split,
    order: torch.Tensor,
    device: torch.device,
    epoch: int,
    args: argparse.Namespace,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """One pass over ``order`` (drop_last: a batch of 1 would break BatchNorm). Returns loss/acc/lr.

    The weight average is updated after every optimizer step. ``trainer.mixer``: mixup/CutMix on each
    batch, the loss then takes soft targets. ``trainer.teacher``: its logits (under ``args.teacher_tta``)
    on the same, augmented and mixed, images (with ``args.teacher_view`` "original": on each face's own
    crop where the student sees its served crop, under the same draws, :func:`augment_batch`) add
    ``args.distill_weight`` of :func:`distillation_loss`."""
    t = trainer
    t.model.train()
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
        batch = original = split.images[idx]
        if split.served is not None and args.served_prob > 0:
            use_served = torch.rand(len(idx), generator=g) < args.served_prob
            batch = torch.where(use_served[:, None, None, None], split.served[idx], batch)
        target = split.labels[idx].to(device, non_blocking=True)
        soft_target = None
        if args.ferplus_soft > 0 and split.votes is not None:
            soft_target = blend_votes(target, split.votes[idx].to(device), args.ferplus_soft)
        teacher_sees = original if t.teacher is not None and args.teacher_view == "original" else None
        images, mixed_target, teacher_images = augment_batch(
            t.transform, t.mixer, batch, target if soft_target is None else soft_target, g, device, t.memory_format,
            also=teacher_sees,
        )  # fmt: skip
        if t.mixer.enabled:
            soft_target = mixed_target
        teacher_logits = None
        if t.teacher is not None:
            with torch.no_grad(), autocast(device, amp_dtype):
                seen_by_teacher = images if teacher_images is None else teacher_images
                teacher_logits = forward_with_tta(t.teacher, seen_by_teacher, args.teacher_tta).float()
        with autocast(device, amp_dtype):
            output = t.model(images)
            loss = t.criterion(output.float(), target if soft_target is None else soft_target)
            if teacher_logits is not None:
                soft = distillation_loss(output, teacher_logits, args.distill_temperature)
                loss = (1.0 - args.distill_weight) * loss + args.distill_weight * soft
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            loss.backward()
            t.optimizer.step()
        if t.model_ema is not None:
            t.model_ema.update_parameters(t.model)
        # Per-step schedules only; ReduceLROnPlateau (an LRScheduler subclass too) steps once per epoch.
        if t.lr_scheduler is not None and not isinstance(t.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            t.lr_scheduler.step()
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
        "lr": t.optimizer.param_groups[0]["lr"],
    }


def augment_batch(
    transform: presets.EvalPreset,
    mixer: presets.MixupCutmix,
    batch: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
    fmt: torch.memory_format,
    also: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The batch as the model trains on it: augmented, on ``device``, then mixed when ``mixer`` is enabled.

    Returns the images, the targets (the mixer's soft targets when it is enabled, else ``targets``
    unchanged) and, when ``also`` is given (another uint8 batch of the same faces, e.g. their data-set
    crops where ``batch`` holds served crops), ``also`` under exactly the same random draws: the same
    affine, light, erasing, mixing partner and CutMix box, face for face."""

    def replay(state: torch.Tensor) -> torch.Generator:
        return torch.Generator().set_state(state)

    state = generator.get_state()
    images = transform(batch, generator=generator).to(device, non_blocking=True).contiguous(memory_format=fmt)
    also_images = None
    if also is not None:
        also_images = transform(also, generator=replay(state)).to(device, non_blocking=True)
        also_images = also_images.contiguous(memory_format=fmt)
    if mixer.enabled:
        state = generator.get_state()
        images, mixed = mixer(images, targets, generator=generator)
        if also_images is not None:
            also_images, _ = mixer(also_images, targets, generator=replay(state))
        targets = mixed
    return images, targets, also_images


@torch.no_grad()
def predict(model: nn.Module, split: Split, ev: Evaluator, tta: str = "none") -> torch.Tensor:
    """Float32 logits (N, C) on CPU, under test-time augmentation ``tta`` as the classifier serves it."""
    model.eval()
    out = []
    for start in range(0, len(split), ev.batch_size):
        images = ev.transform(split.images[start : start + ev.batch_size]).to(ev.device)
        images = images.contiguous(memory_format=ev.memory_format)
        with autocast(ev.device, ev.amp_dtype):
            out.append(forward_with_tta(model, images, tta).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(EMOTIONS))


def evaluate(model: nn.Module, split: Split, ev: Evaluator, tta: str = "none") -> dict[str, Any]:
    """Loss (plain cross-entropy) plus ``classification_metrics``; ``preds`` the argmax, ``logits`` the logits."""
    logits = predict(model, split, ev, tta)
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
# Steps: fit, finalize, write_report, main
# ---------------------------------------------------------------------------------------------


def fit(
    args: argparse.Namespace,
    trainer: Trainer,
    loaded: Loaded,
    ev: Evaluator,
    progress: Progress,
    out: Path,
) -> Progress:
    """The epoch loop from ``progress``: train, score PublicTest, keep the best weights (selection),
    checkpoint every epoch, stop early after ``--patience`` epochs without improvement."""
    train_split, val_split = loaded.splits["Training"], loaded.splits["PublicTest"]
    best = progress.best
    stale = progress.epoch - best["epoch"] if best["epoch"] >= 0 else 0  # epochs since the best one
    for epoch in range(progress.epoch + 1, args.epochs):
        if args.patience and stale >= args.patience:
            print(f"early stop: no PublicTest improvement for {stale} epochs", flush=True)
            break
        t_epoch = time.perf_counter()
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout randomness, reproducible on resume
        order = epoch_order(train_split, epoch, args.seed, args.oversample)
        train_stats = train_one_epoch(trainer, train_split, order, ev.device, epoch, args, ev.amp_dtype)
        val = evaluate(trainer.scored, val_split, ev)
        score = val[args.select_metric]  # the SELECT_METRICS are evaluate()'s key names
        if isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            trainer.lr_scheduler.step(score)
        improved = score > best["score"]
        if improved:
            best = {"score": score, "epoch": epoch, "state": copy.deepcopy(trainer.scored.state_dict())}
            stale = 0
        else:
            stale += 1
        seconds = time.perf_counter() - t_epoch
        progress.epoch, progress.best, progress.train_s = epoch, best, progress.train_s + seconds
        progress.history.append(
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
        save_checkpoint(checkpoint_state(trainer, progress, args), out)
    return progress


def finalize(
    args: argparse.Namespace, model: nn.Module, progress: Progress, loaded: Loaded, ev: Evaluator, out: Path
) -> Final:
    """Score the selected weights in fp32 on PublicTest and (for the first time) PrivateTest, single pass
    and flip TTA; how often bf16 serving agrees; fit both temperatures; write the model file."""
    if progress.best["state"] is None:
        raise SystemExit("no epoch was trained (epochs <= resumed epoch?)")
    model.load_state_dict(progress.best["state"])
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # see build_trainer
    t_eval = time.perf_counter()
    splits = {name: loaded.splits[name] for name in EVAL_SPLITS}
    fp32 = ev.with_amp(None)  # the numbers the model file reproduces
    scores = {name: evaluate(model, split, fp32) for name, split in splits.items()}
    # Serving runs bf16 autocast: how often its argmax matches fp32 on the same images.
    bf16 = ev.with_amp(torch.bfloat16)
    agreement = {
        name: float((predict(model, split, bf16).argmax(1) == scores[name]["preds"]).float().mean())
        for name, split in splits.items()
    }
    # Temperature scaling on PublicTest (the selection split; PrivateTest stays untouched until here).
    temperature, calibration, reliability = calibrate(scores, splits, args.ece_bins)
    # The flip-TTA recipe (classifier.tta: flip) gets its own temperature, fitted on its own PublicTest
    # logits: averaged logits are less extreme than single-pass ones.
    flip = {name: evaluate(model, split, fp32, tta="flip") for name, split in splits.items()}
    temperature_flip, calibration_flip, _ = calibrate(flip, splits, args.ece_bins)
    final = Final(
        scores=scores,
        flip=flip,
        bf16_agreement=agreement,
        temperature=temperature,
        calibration=calibration,
        reliability=reliability,
        temperature_flip=temperature_flip,
        calibration_flip=calibration_flip,
        params=sum(p.numel() for p in model.parameters()),
        seconds=time.perf_counter() - t_eval,
    )
    for name, m in scores.items():
        print(f"final {name}: acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} loss {m['loss']:.4f}", flush=True)
    print(
        f"calibration: temperature {temperature:.3f} (fit on PublicTest); ECE "
        + ", ".join(f"{n} {calibration[n]['ece_raw']:.4f} -> {calibration[n]['ece_calibrated']:.4f}" for n in scores),
        flush=True,
    )
    print(
        "flip TTA: "
        + ", ".join(f"{n} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}" for n, m in flip.items())
        + f"; temperature {temperature_flip:.3f}",
        flush=True,
    )
    final.model_path = save_model(model.cpu(), model_info(args, final, progress, loaded.data), out / "model.pt2")
    return final


def model_info(args: argparse.Namespace, final: Final, progress: Progress, data: Fer2013) -> ModelInfo:
    """The model file's description: preprocessing, temperatures, the scores, and how it was trained."""
    metrics: dict[str, Any] = {
        name: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "loss": m["loss"], "n": m["n"]}
        for name, m in final.scores.items()
    }
    for name in final.scores:
        metrics[name]["ece_raw"] = final.calibration[name]["ece_raw"]
        metrics[name]["ece_calibrated"] = final.calibration[name]["ece_calibrated"]
    metrics["best_epoch"] = progress.best["epoch"] + 1
    metrics["select_metric"] = args.select_metric
    metrics["calibration"] = final.calibration
    metrics["tta_flip"] = {n: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]} for n, m in final.flip.items()}
    metrics["calibration_flip"] = final.calibration_flip
    return ModelInfo(
        arch=args.arch,
        class_names=list(EMOTIONS),
        input_size=(48, 48),
        mean=args.mean,
        std=args.std,
        temperature=final.temperature,
        tta_temperatures={"flip": final.temperature_flip},
        data_sha256=data.sha256,
        metrics=metrics,
        # history: lets `python -m training evaluate --out` draw the training curves from the file alone.
        extra={
            "config": json_ready(vars(args)),
            "params": final.params,
            "torch": torch.__version__,
            "labels": data.labels,
            "labels_sha256": data.labels_sha256,
            "history": progress.history,
        },
    )


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("preds", "logits")}


def write_report(
    args: argparse.Namespace,
    out: Path,
    loaded: Loaded,
    progress: Progress,
    final: Final,
    ev: Evaluator,
    t_start: float,
) -> dict[str, Any]:
    """report.json, training_curves.png, confusion_privatetest.png and reliability_privatetest.png in ``out``."""
    assert final.model_path is not None
    history, best_epoch = progress.history, progress.best["epoch"] + 1
    epoch_s = sum(h["seconds"] for h in history)
    report = {
        "model_file": final.model_path.name,
        "arch": args.arch,
        "params": final.params,
        "class_names": list(EMOTIONS),
        "best_epoch": best_epoch,
        "select_metric": args.select_metric,
        "epochs_run": len(history),
        **{name: _summary(final.scores[name]) for name in EVAL_SPLITS},
        "bf16_argmax_agreement": final.bf16_agreement,
        "calibration": final.calibration,
        "tta_flip": {name: _summary(m) for name, m in final.flip.items()},
        "calibration_flip": final.calibration_flip,
        "history": history,
        "config": json_ready(vars(args)),
        "data": {
            **loaded.data.summary(),
            "skipped_rows": loaded.data.skipped_rows,
            "counts": {name: len(split) for name, split in loaded.splits.items()},
        },
        "timing": {
            "data_load_s": loaded.seconds,
            "train_s_this_run": progress.train_s,
            "train_s_all_epochs": epoch_s,
            "mean_epoch_s": epoch_s / max(1, len(history)),
            "final_eval_s": final.seconds,
            "total_s_this_run": time.perf_counter() - t_start,
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(ev.device),
            "amp": str(ev.amp_dtype),
            "memory_format": str(ev.memory_format),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    (out / "report.json").write_text(json.dumps(json_ready(report), indent=1))
    plot_training_curves(history, out / "training_curves.png")
    test, calibration = final.scores["PrivateTest"], final.calibration["PrivateTest"]
    plot_confusion(
        test["confusion_matrix"],
        EMOTIONS,
        out / "confusion_privatetest.png",
        f"PrivateTest ({args.arch}, epoch {best_epoch}): acc {test['accuracy']:.3f}",
    )
    curves = final.reliability["PrivateTest"]
    plot_reliability(
        {
            f"raw (ECE {calibration['ece_raw']:.3f})": curves["raw"],
            f"T={final.temperature:.2f} (ECE {calibration['ece_calibrated']:.3f})": curves["calibrated"],
        },
        out / "reliability_privatetest.png",
        f"PrivateTest ({args.arch}), temperature fit on PublicTest",
    )
    print(
        f"wrote {final.model_path}, report.json, training_curves.png, confusion_privatetest.png, "
        f"reliability_privatetest.png in {out}",
        flush=True,
    )
    return report


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select on PublicTest, evaluate PrivateTest once, write the model file and report."""
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # 0: the CPUs this process may use (affinity, cgroup quota), not torch's count of the host's cores.
    torch.set_num_threads(thread_budget(args.workers))
    seed_everything(args.seed)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    loaded = load_splits(args)
    trainer = build_trainer(args, loaded.splits["Training"], device, amp_dtype)
    progress = restore_checkpoint(resume_path(args), trainer, args) if args.resume else Progress()
    print(
        f"model: {args.arch} {sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f}M params, "
        f"device {device}, amp {amp_dtype}, {str(trainer.memory_format).removeprefix('torch.')}, "
        f"threads {torch.get_num_threads()}, {trainer.steps_per_epoch} steps/epoch",
        flush=True,
    )
    ev = Evaluator(
        presets.EvalPreset(args.mean, args.std), device, amp_dtype, args.eval_batch_size, trainer.memory_format
    )
    progress = fit(args, trainer, loaded, ev, progress, out)
    final = finalize(args, trainer.model, progress, loaded, ev, out)
    return write_report(args, out, loaded, progress, final, ev, t_start)


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(parse_args, main, argv, errors=(DataError,))
