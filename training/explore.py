"""``python -m training explore --data D --out DIR``: what is in a data set, before training on it.

Writes to ``--out``: ``class_counts.png`` (images per class and split), ``pixel_histograms.png``
(pixel-value distribution per split, and mean brightness per class), ``samples.png`` (a grid of
sample images, one row per class, picked with a fixed seed) and ``explore.json`` (counts, pixel
statistics, 256-bin histograms, exact-duplicate images within and across splits, what was skipped
or dropped while loading). The JSON is also printed on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emostream.wire import EMOTIONS
from training.cli_support import emit, load_data, log, run_subcommand, subcommand_parser
from training.data import DataError, Fer2013
from training.metrics import pyplot


def get_args_parser() -> argparse.ArgumentParser:
    p = subcommand_parser(
        "explore", "Class counts, pixel histograms and sample grids of a data set (PNGs + one JSON).", data=True
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--samples-per-class", type=int, default=10, help="columns of the sample grid")
    p.add_argument("--seed", type=int, default=0, help="which samples the grid shows")
    return p


def pixel_stats(images: np.ndarray) -> dict[str, Any]:
    """Mean/std/min/max and the 256-bin histogram of every pixel of uint8 ``images``."""
    flat = images.reshape(-1)
    if flat.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "histogram": [0] * 256}
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "min": int(flat.min()),
        "max": int(flat.max()),
        "histogram": np.bincount(flat, minlength=256).tolist(),
    }


def duplicate_stats(data: Fer2013) -> dict[str, int]:
    """Groups of pixel-identical images: overall, and how many groups span more than one split.

    Why: FER2013 is known to hold duplicates; a group spanning Training and a test split leaks.
    """
    names = [n for n, s in data.splits.items() if len(s)]
    if not names:
        return {"groups": 0, "images_in_groups": 0, "cross_split_groups": 0, "conflicting_label_groups": 0}
    images = np.concatenate([data.splits[n].images.reshape(len(data.splits[n]), -1).numpy() for n in names])
    labels = np.concatenate([data.splits[n].labels.numpy() for n in names])
    split_ids = np.concatenate([np.full(len(data.splits[n]), i) for i, n in enumerate(names)])
    # One void scalar per image: np.unique then compares whole rows at C speed.
    rows = np.ascontiguousarray(images).view(np.dtype((np.void, images.shape[1]))).ravel()
    _, group, counts = np.unique(rows, return_inverse=True, return_counts=True)
    dup = counts[group] > 1
    groups = np.flatnonzero(counts > 1)
    cross = conflicting = 0
    if groups.size:
        g, s, lab = group[dup], split_ids[dup], labels[dup]
        order = np.argsort(g, kind="stable")
        g, s, lab = g[order], s[order], lab[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        cross = int(sum(len(set(part)) > 1 for part in np.split(s, starts[1:])))
        conflicting = int(sum(len(set(part)) > 1 for part in np.split(lab, starts[1:])))
    return {
        "groups": int(groups.size),
        "images_in_groups": int(dup.sum()),
        "cross_split_groups": cross,
        "conflicting_label_groups": conflicting,
    }


def plot_class_counts(counts: dict[str, list[int]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(counts))
    x = np.arange(len(EMOTIONS))
    for i, (split, values) in enumerate(counts.items()):
        bars = ax.bar(x + i * width, values, width, label=f"{split} ({sum(values)})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x + width * (len(counts) - 1) / 2, EMOTIONS)
    ax.set(ylabel="images", title="Images per class and split")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pixel_histograms(data: Fer2013, stats: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (ax_hist, ax_class) = plt.subplots(1, 2, figsize=(11, 4))
    for split, s in stats.items():
        hist = np.asarray(s["histogram"], dtype=float)
        if hist.sum():
            ax_hist.plot(np.arange(256), hist / hist.sum(), label=split)
    ax_hist.set(xlabel="pixel value", ylabel="fraction of pixels", title="Pixel values per split")
    ax_hist.legend()
    ax_hist.grid(alpha=0.3)
    # Mean brightness per image, by class: a class-dependent brightness would be a shortcut to learn.
    per_class: list[list[float]] = [[] for _ in EMOTIONS]
    for part in data.splits.values():
        means = part.images.float().mean(dim=(1, 2, 3)).numpy()
        for k in range(len(EMOTIONS)):
            per_class[k].extend(means[part.labels.numpy() == k].tolist())
    shown = [k for k in range(len(EMOTIONS)) if per_class[k]]
    if shown:
        ax_class.boxplot([per_class[k] for k in shown], showfliers=False)
        ax_class.set_xticks(range(1, len(shown) + 1), [EMOTIONS[k] for k in shown])
    ax_class.set(ylabel="mean pixel value of an image", title="Image brightness per class (all splits)")
    ax_class.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(data: Fer2013, per_class: int, seed: int, path: Path) -> dict[str, list[list[Any]]]:
    """Grid: one row per class, ``per_class`` random images of it (any split). Returns what was shown."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    shown: dict[str, list[list[Any]]] = {}
    fig, axes = plt.subplots(len(EMOTIONS), per_class, figsize=(per_class * 0.9, len(EMOTIONS) * 0.95), squeeze=False)
    pool = [(name, i, int(label)) for name, s in data.splits.items() for i, label in enumerate(s.labels.tolist())]
    for k, emotion in enumerate(EMOTIONS):
        candidates = [(n, i) for n, i, label in pool if label == k]
        picks: list[int] = (
            rng.choice(len(candidates), size=min(per_class, len(candidates)), replace=False).tolist()
            if candidates
            else []
        )
        shown[emotion] = [list(candidates[j]) for j in sorted(picks)]
        for col in range(per_class):
            ax = axes[k, col]
            ax.axis("off")
            if col < len(shown[emotion]):
                name, i = shown[emotion][col]
                ax.imshow(data.splits[name].images[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[k, 0].set_title(emotion, fontsize=8, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return shown


def explore(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    log(f"data: {data.path} ({data.layout}, labels {data.labels}): {data.summary()['counts']}")
    counts = {name: split.class_counts() for name, split in data.splits.items()}
    stats = {name: pixel_stats(split.images.numpy()) for name, split in data.splits.items()}
    plot_class_counts(counts, out / "class_counts.png")
    plot_pixel_histograms(data, stats, out / "pixel_histograms.png")
    samples = plot_samples(data, args.samples_per_class, args.seed, out / "samples.png")
    result = {
        "data": data.summary(),
        "class_names": list(EMOTIONS),
        "counts": {name: dict(zip(EMOTIONS, c, strict=True)) for name, c in counts.items()},
        "totals": {
            "per_split": {name: sum(c) for name, c in counts.items()},
            "per_class": dict(zip(EMOTIONS, np.sum(list(counts.values()), axis=0).tolist(), strict=True))
            if counts
            else {},
        },
        "pixels": stats,
        "constant_images": {
            name: int((split.images.amax((1, 2, 3)) == split.images.amin((1, 2, 3))).sum())
            for name, split in data.splits.items()
        },
        "duplicates": duplicate_stats(data),
        "samples": {"seed": args.seed, "shown": samples},
        "files": ["class_counts.png", "pixel_histograms.png", "samples.png", "explore.json"],
    }
    emit(result, out / "explore.json")
    log(f"wrote {', '.join(result['files'])} in {out}")
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(get_args_parser().parse_args, explore, argv, errors=(DataError,))
