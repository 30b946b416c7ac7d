"""Emotion data sets into in-memory uint8 tensors: FER2013 CSV, image folders, FER+ labels.

Layouts (:func:`load_dataset` picks by what ``path`` is):

* FER2013 CSV ``emotion,pixels,Usage`` (plain or gzip): splits Training/PublicTest/PrivateTest.
* Image folder with splits ``<root>/<split>/<class>/*.png``: split folder names map case-insensitively
  to FER2013 splits (``train``/``training`` -> Training, ``val``/``valid``/``validation``/``publictest``
  -> PublicTest, ``test``/``privatetest`` -> PrivateTest).
* Flat image folder ``<root>/<class>/*.png``: one split named ``all``.

Class names match :data:`EMOTIONS` case-insensitively, plus the FER+ spellings (``happiness``,
``sadness``, ``anger``); another folder name is an error. Images are read grayscale with OpenCV (png,
jpg, bmp, ...), and other sizes are resized to 48x48 (area interpolation, counted).

Bad samples -- a CSV row without exactly 2304 pixel values in 0..255, an image file that does not
decode -- are skipped, counted per reason and warned about (``strict=True`` makes each one a
:class:`DataError` naming the row or file). Label problems (unknown emotion code, unknown class or
split folder) are always errors. Everything is checked while loading, before any training step, so a
bad sample never stops a run halfway through an epoch.

The whole FER2013 set is ~35.9k x 48 x 48 bytes (83 MB), so it stays in memory as one tensor per split;
batches are sliced from it and augmented in torch (see ``presets``), no per-sample Dataset.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emostream.wire import EMOTIONS

SIDE = 48
NUM_PIXELS = SIDE * SIDE
SPLITS = ("Training", "PublicTest", "PrivateTest")
FLAT_SPLIT = "all"
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")
LABEL_SOURCES = ("fer2013", "ferplus")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"})

#: Folder names accepted for each split (lower case).
SPLIT_ALIASES: dict[str, str] = {
    "training": "Training",
    "train": "Training",
    "publictest": "PublicTest",
    "val": "PublicTest",
    "valid": "PublicTest",
    "validation": "PublicTest",
    "privatetest": "PrivateTest",
    "test": "PrivateTest",
}
#: Lower-case class name -> index into EMOTIONS. FER+ names its columns happiness/sadness/anger.
CLASS_ALIASES: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)} | {
    "happiness": EMOTIONS.index("happy"),
    "sadness": EMOTIONS.index("sad"),
    "anger": EMOTIONS.index("angry"),
}

#: fer2013new.csv vote columns, in file order.
FERPLUS_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
#: FER+ outcome codes below 0 (rows dropped by the majority rule); >= 0 is an EMOTIONS index.
FERPLUS_NO_MAJORITY, FERPLUS_CONTEMPT, FERPLUS_UNKNOWN, FERPLUS_NOT_A_FACE = -1, -2, -3, -4
FERPLUS_DROP_REASONS = {
    FERPLUS_NO_MAJORITY: "ferplus: no strict majority",
    FERPLUS_CONTEMPT: "ferplus: majority contempt",
    FERPLUS_UNKNOWN: "ferplus: majority unknown",
    FERPLUS_NOT_A_FACE: "ferplus: majority not a face (NF)",
}
_FERPLUS_TO_CODE = [CLASS_ALIASES[c] for c in FERPLUS_COLUMNS[:7]] + [
    FERPLUS_CONTEMPT,
    FERPLUS_UNKNOWN,
    FERPLUS_NOT_A_FACE,
]
MAX_REPORTED_EXAMPLES = 5


class DataError(ValueError):
    """The data is not usable (message names the file and row or image)."""


@dataclass
class Split:
    """One split: ``images`` uint8 (N, 1, 48, 48), ``labels`` int64 (N,) indexing EMOTIONS; ``votes``,
    when loaded, float32 (N, len(EMOTIONS)): each row's FER+ vote shares (:func:`ferplus_vote_shares`)."""

    images: torch.Tensor
    labels: torch.Tensor
    votes: torch.Tensor | None = None
    #: Each row's face as the served detector crops it (uint8, like ``images``; a row the detector
    #: missed holds its own image), when loaded: ``python -m training served-crops``.
    served: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int = len(EMOTIONS)) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class Fer2013:
    """A loaded data set (any layout; the name is historical).

    ``skipped``: bad samples left out, per reason; ``dropped``: rows left out by the label rule (FER+
    majority vote), per reason; ``examples``: the first few skipped rows/files, for the message.
    """

    splits: dict[str, Split]
    skipped_rows: int
    sha256: str
    path: str
    layout: str = "fer2013_csv"
    labels: str = "fer2013"
    labels_path: str = ""
    labels_sha256: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    resized: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """JSON-ready description: what was read, how much of it was used, and what was left out."""
        return {
            "path": self.path,
            "layout": self.layout,
            "sha256": self.sha256,
            "labels": self.labels,
            "labels_path": self.labels_path,
            "labels_sha256": self.labels_sha256,
            "counts": {name: len(split) for name, split in self.splits.items()},
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_rows,
            "skipped_examples": list(self.examples),
            "dropped_by_label_rule": dict(self.dropped),
            "resized_images": self.resized,
        }


#: Layout-neutral name for new code.
EmotionData = Fer2013


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_index(name: str) -> int | None:
    """EMOTIONS index of a class name (case-insensitive, FER+ spellings too); None if unknown."""
    return CLASS_ALIASES.get(name.strip().lower())


def split_name(name: str) -> str | None:
    """FER2013 split for a folder name (case-insensitive, see SPLIT_ALIASES); None if unknown."""
    return SPLIT_ALIASES.get(name.strip().lower())


class _Skips:
    """Collects skipped samples: counted per reason, the first few kept for the message."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, reason: str, where: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {reason}")
        self.counts[reason] += 1
        if len(self.examples) < MAX_REPORTED_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def warn(self, source: str | Path) -> None:
        if self.total:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
            warnings.warn(
                f"{source}: skipped {self.total} row(s)/file(s) ({reasons}); first: {'; '.join(self.examples)}",
                stacklevel=3,
            )


# ---------------------------------------------------------------------------------------------
# FER2013 CSV
# ---------------------------------------------------------------------------------------------


def _row_where(path: Path, row: int) -> str:
    # Data rows count from 0 after the header; the file line adds the header and 1-based numbering.
    return f"{path} data row {row} (line {row + 2})"


def _parse_pixels(pixels: pd.Series, path: Path, row_ids: np.ndarray, skips: _Skips) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (M, 2304), mask of rows kept). Bad rows go to ``skips`` (or raise when strict)."""
    text = pixels.fillna("").astype(str).str.strip()
    # Counting separators is a C-level string scan per row; far cheaper than splitting every row.
    counts = text.str.count(r"\s+").to_numpy() + (text.str.len().to_numpy() > 0)
    keep = counts == NUM_PIXELS
    for i in np.flatnonzero(~keep):
        skips.add(f"{counts[i]} pixel values instead of {NUM_PIXELS}", _row_where(path, int(row_ids[i])))
    if not keep.any():
        return np.zeros((0, NUM_PIXELS), np.uint8), keep
    # One join + one C parse for all rows: much faster than a per-row split (docs/benchmarks.md,
    # "Measurements behind defaults and constants").
    joined = " ".join(text[keep].tolist())
    with warnings.catch_warnings():
        # Malformed text makes fromstring stop early (DeprecationWarning) or raise (numpy >= 2.3);
        # either way the slow path below finds the bad rows.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            values = np.fromstring(joined, dtype=np.int64, sep=" ")
        except ValueError:
            values = np.zeros(0, np.int64)
    if values.size == int(keep.sum()) * NUM_PIXELS and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8).reshape(-1, NUM_PIXELS), keep
    # Slow path, only for broken files: find which rows are bad, per row.
    rows: list[np.ndarray] = []
    for i in np.flatnonzero(keep):
        where = _row_where(path, int(row_ids[i]))
        try:
            row = np.array(str(text.iat[int(i)]).split(), dtype=np.int64)
        except ValueError:
            skips.add("non-numeric pixel values", where)
            keep[i] = False
            continue
        if row.min() < 0 or row.max() > 255:
            skips.add(f"pixel values {row.min()}..{row.max()} outside 0..255", where)
            keep[i] = False
            continue
        rows.append(row.astype(np.uint8))
    images = np.stack(rows) if rows else np.zeros((0, NUM_PIXELS), np.uint8)
    return images, keep


def _read_fer2013_frame(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"pixels": str, "Usage": str}, compression="infer")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; expected header {','.join(REQUIRED_COLUMNS)}")
    return frame


def load_fer2013(
    path: str | Path,
    splits: tuple[str, ...] = SPLITS,
    hash_file: bool = True,
    *,
    labels: str = "fer2013",
    ferplus_csv: str | Path | None = None,
    strict: bool = False,
    ferplus_votes: bool = False,
) -> Fer2013:
    """Load a fer2013.csv(.gz); with ``labels="ferplus"`` take labels from fer2013new.csv instead.

    Bad pixel rows are skipped with a warning (``strict``: DataError); an unknown emotion code is a
    DataError. Only rows of ``splits`` are parsed. ``ferplus_votes``: each split also carries the FER+
    vote shares of its rows (``Split.votes``), whichever labels it has.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if labels not in LABEL_SOURCES:
        raise DataError(f"unknown label source {labels!r}; choose one of {list(LABEL_SOURCES)}")
    frame = _read_fer2013_frame(path)
    usage = frame["Usage"].fillna("").str.strip()
    unknown = sorted(set(usage.unique()) - set(SPLITS))
    if unknown:
        raise DataError(f"{path}: unknown Usage value(s) {unknown}; expected {list(SPLITS)}")
    absent = [name for name in splits if name not in SPLITS]
    if absent:
        counts = usage.value_counts()
        have = ", ".join(f"{name} ({int(counts[name])} rows)" for name in SPLITS if name in counts)
        raise DataError(f"{path} has no split {absent[0]!r}; its splits: {have or 'none (no rows)'}")

    dropped: Counter[str] = Counter()
    labels_path, labels_sha = "", ""
    ferplus_path = Path(ferplus_csv) if ferplus_csv else path.parent / "fer2013new.csv"
    votes_np = load_ferplus_votes(ferplus_path, usage.to_numpy()) if labels == "ferplus" or ferplus_votes else None
    if votes_np is not None:
        labels_path, labels_sha = str(ferplus_path), (file_sha256(ferplus_path) if hash_file else "")
    if labels == "ferplus":
        assert votes_np is not None
        labels_np = ferplus_majority(votes_np)
    else:
        numeric = pd.to_numeric(frame["emotion"], errors="coerce")
        bad = ~numeric.isin(range(len(EMOTIONS)))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: {int(bad.sum())} row(s) with an unknown emotion label, first at data row {row}: "
                f"{frame['emotion'].iloc[row]!r} (expected 0..{len(EMOTIONS) - 1})"
            )
        labels_np = numeric.to_numpy().astype(np.int64)

    wanted = usage.isin(splits).to_numpy().copy()  # pandas 3 hands out read-only arrays
    if labels == "ferplus":
        for code, reason in FERPLUS_DROP_REASONS.items():
            n = int((wanted & (labels_np == code)).sum())
            if n:
                dropped[reason] = n
        wanted &= labels_np >= 0
    row_ids = np.flatnonzero(wanted)
    skips = _Skips(strict)
    images, keep = _parse_pixels(frame["pixels"].iloc[row_ids], path, row_ids, skips)
    skips.warn(path)
    labels_kept = labels_np[row_ids][keep]
    usage_kept = usage.to_numpy()[row_ids][keep]
    shares_kept = ferplus_vote_shares(votes_np[row_ids][keep]) if ferplus_votes and votes_np is not None else None
    out: dict[str, Split] = {}
    for name in splits:
        sel = usage_kept == name
        out[name] = Split(
            images=torch.from_numpy(images[sel].reshape(-1, 1, SIDE, SIDE).copy()),
            labels=torch.from_numpy(labels_kept[sel].copy()),
            votes=None if shares_kept is None else torch.from_numpy(shares_kept[sel].copy()),
        )
    return Fer2013(
        splits=out,
        skipped_rows=skips.total,
        sha256=file_sha256(path) if hash_file else "",
        path=str(path),
        layout="fer2013_csv",
        labels=labels,
        labels_path=labels_path,
        labels_sha256=labels_sha,
        skipped=dict(skips.counts),
        dropped=dict(dropped),
        examples=skips.examples,
    )


# ---------------------------------------------------------------------------------------------
# FER+ labels
# ---------------------------------------------------------------------------------------------


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ "majority" labels for vote counts (N, 10) in fer2013new.csv column order.

    The rule of microsoft/FERPlus ``src/ferplus.py`` (``_process_data``, mode ``majority``):

    1. Outlier removal: a count of 1 (a single annotator) is set to 0, in every column.
    2. The column with the most remaining votes wins only with a strict majority: more than half of
       the remaining votes (so ties never win; an all-zero row has no majority).
    3. Rows without a winner, or won by ``unknown`` or ``NF`` (not a face), are dropped, as FER+ does;
       rows won by ``contempt`` are dropped too, because FER2013 has no contempt class.

    Returns int64 (N,): an EMOTIONS index, or a negative FERPLUS_* code saying why the row is dropped.
    The 173 fer2013new.csv rows with a blank image name carry 10 NF votes, so step 3 drops them.
    """
    votes = np.asarray(votes, dtype=np.int64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise DataError(f"FER+ votes must have shape (N, {len(FERPLUS_COLUMNS)}), got {votes.shape}")
    kept = np.where(votes <= 1, 0, votes)
    total = kept.sum(axis=1)
    winner = kept.argmax(axis=1)
    top = kept.max(axis=1)
    codes = np.asarray(_FERPLUS_TO_CODE, dtype=np.int64)[winner]
    return np.where(2 * top > total, codes, FERPLUS_NO_MAJORITY)


def ferplus_vote_shares(votes: np.ndarray) -> np.ndarray:
    """Each row's FER+ votes as shares over EMOTIONS (float32 (N, len(EMOTIONS)), rows summing to 1).

    The same outlier removal as :func:`ferplus_majority` (a single annotator's vote is dropped); votes
    for contempt, unknown and NF are left out, as FER2013 has no such class. A row left with no vote
    is all zeros: it has no FER+ opinion to offer.
    """
    votes = np.asarray(votes, dtype=np.int64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise DataError(f"FER+ votes must have shape (N, {len(FERPLUS_COLUMNS)}), got {votes.shape}")
    kept = np.where(votes <= 1, 0, votes)[:, :7].astype(np.float32)
    shares = np.zeros((len(votes), len(EMOTIONS)), dtype=np.float32)
    for column, code in enumerate(_FERPLUS_TO_CODE[:7]):
        shares[:, code] = kept[:, column]
    total = shares.sum(axis=1, keepdims=True)
    return np.divide(shares, total, out=np.zeros_like(shares), where=total > 0)


def load_ferplus_codes(path: str | Path, expected_usage: np.ndarray | None = None) -> np.ndarray:
    """Majority-vote codes (see :func:`ferplus_majority`) for every row of a fer2013new.csv."""
    return ferplus_majority(load_ferplus_votes(path, expected_usage))


def load_ferplus_votes(path: str | Path, expected_usage: np.ndarray | None = None) -> np.ndarray:
    """The vote counts (N, 10), in FERPLUS_COLUMNS order, of every row of a fer2013new.csv.

    fer2013new.csv lines up row by row with fer2013.csv; with ``expected_usage`` (the fer2013.csv
    Usage column) a different row count or any Usage mismatch is a DataError naming the first row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FER+ label file {path} does not exist (pass --ferplus-csv PATH)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from exc
    missing = [c for c in ("Usage", *FERPLUS_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks FER+ column(s) {missing}")
    votes = frame[list(FERPLUS_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = votes.isna().any(axis=1).to_numpy() | (votes.to_numpy() < 0).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{_row_where(path, row)}: vote counts must be non-negative integers")
    if expected_usage is not None:
        if len(frame) != len(expected_usage):
            raise DataError(
                f"{path} has {len(frame)} rows but the FER2013 CSV has {len(expected_usage)}: "
                "fer2013new.csv must line up row by row with fer2013.csv"
            )
        usage = frame["Usage"].fillna("").astype(str).str.strip().to_numpy()
        mismatch = usage != np.asarray(expected_usage)
        if mismatch.any():
            row = int(np.flatnonzero(mismatch)[0])
            raise DataError(
                f"{_row_where(path, row)}: Usage {usage[row]!r} but the FER2013 CSV says "
                f"{expected_usage[row]!r}; the two files do not line up"
            )
    return votes.to_numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_class_dirs(dirs: list[Path]) -> None:
    unknown = [d for d in dirs if class_index(d.name) is None]
    if unknown:
        raise DataError(
            f"unknown class folder {unknown[0]} ({len(unknown)} unknown in all); class folders must be named "
            f"one of {list(EMOTIONS)} (any case; also happiness/sadness/anger)"
        )


def _scan_image_folder(root: Path) -> tuple[str, dict[str, list[Path]]]:
    """(layout, split name -> class folders). Raises DataError for folders that fit neither layout."""
    top = _subdirs(root)
    if not top:
        raise DataError(f"{root} has no sub-folders: expected <root>/<class>/*.png or <root>/<split>/<class>/*.png")
    if any(split_name(d.name) for d in top):
        unknown = [d for d in top if split_name(d.name) is None]
        if unknown:
            raise DataError(
                f"unknown split folder {unknown[0]}; split folders must be one of {sorted(SPLIT_ALIASES)} (any case)"
            )
        layout: dict[str, list[Path]] = {}
        for d in top:
            name = split_name(d.name)
            assert name is not None
            if name in layout:
                raise DataError(f"{root}: two folders map to split {name}: {layout[name][0].parent.name}, {d.name}")
            classes = _subdirs(d)
            _check_class_dirs(classes)
            layout[name] = classes
        return "image_folder_splits", layout
    _check_class_dirs(top)
    return "image_folder_flat", {FLAT_SPLIT: top}


def read_image(path: Path, size: int = SIDE) -> tuple[np.ndarray | None, bool]:
    """(uint8 grayscale (size, size) or None if it does not decode, whether it was resized)."""
    import cv2

    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None, False
    image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE) if buffer.size else None
    if image is None:
        return None, False
    if image.shape != (size, size):
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), True
    return image, False


def load_image_folder(
    root: str | Path, splits: tuple[str, ...] | None = None, hash_files: bool = True, *, strict: bool = False
) -> Fer2013:
    """Load ``<root>/<split>/<class>/*`` or ``<root>/<class>/*`` (see the module docstring).

    Files are read in sorted order (deterministic). Files without an image suffix are ignored;
    image files that do not decode are skipped and counted (``strict``: DataError naming the file).
    The sha256 covers every loaded file's relative path and bytes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    layout, split_dirs = _scan_image_folder(root)
    skips = _Skips(strict)
    digest = hashlib.sha256()
    resized = 0
    out: dict[str, Split] = {}
    # The FER2013 split names always exist for a split layout (empty when absent), as with the CSV.
    names = list(split_dirs) if layout == "image_folder_flat" else list(SPLITS)
    for name in names:
        if splits is not None and name not in splits:
            continue
        images: list[np.ndarray] = []
        labels: list[int] = []
        for class_dir in split_dirs.get(name, []):
            label = class_index(class_dir.name)
            assert label is not None
            for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                image, was_resized = read_image(file)
                if image is None:
                    skips.add("unreadable image", str(file))
                    continue
                resized += was_resized
                if hash_files:
                    digest.update(str(file.relative_to(root)).encode())
                    digest.update(file.read_bytes())
                images.append(image)
                labels.append(label)
        stacked = np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8)
        out[name] = Split(
            images=torch.from_numpy(stacked.reshape(-1, 1, SIDE, SIDE).copy()),
            labels=torch.tensor(labels, dtype=torch.int64),
        )
    skips.warn(root)
    if resized:
        warnings.warn(f"{root}: resized {resized} image(s) that were not {SIDE}x{SIDE}", stacklevel=2)
    return Fer2013(
        splits=out,
        skipped_rows=skips.total,
        sha256=digest.hexdigest() if hash_files else "",
        path=str(root),
        layout=layout,
        skipped=dict(skips.counts),
        resized=resized,
        examples=skips.examples,
    )


def load_dataset(
    path: str | Path,
    *,
    labels: str = "fer2013",
    ferplus_csv: str | Path | None = None,
    splits: tuple[str, ...] | None = None,
    strict: bool = False,
    hash_file: bool = True,
    ferplus_votes: bool = False,
) -> Fer2013:
    """Load any supported layout: a directory is an image folder, a file a FER2013 CSV (plain/gz).

    ``labels="ferplus"`` (FER2013 CSV only) replaces the labels by the FER+ majority vote from
    ``ferplus_csv`` (default: fer2013new.csv next to the CSV); ``ferplus_votes`` adds its vote shares
    (``Split.votes``). ``splits``: load only these.
    """
    path = Path(path)
    if path.is_dir():
        if labels != "fer2013" or ferplus_votes:
            raise DataError(
                "FER+ labels and votes need the FER2013 CSV (row-aligned with fer2013new.csv), not a folder"
            )
        return load_image_folder(path, splits, hash_file, strict=strict)
    return load_fer2013(
        path,
        splits or SPLITS,
        hash_file,
        labels=labels,
        ferplus_csv=ferplus_csv,
        strict=strict,
        ferplus_votes=ferplus_votes,
    )
