"""Classification metrics (scikit-learn), calibration (ECE, temperature scaling) and the report figures
(matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    labels = list(range(len(class_names)))
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train vs PublicTest."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="PublicTest")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (augmented)")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="PublicTest")
    ax_acc.plot(epochs, [h["val_macro_f1"] for h in history], "--", label="PublicTest macro-F1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) annotated with counts."""
    plt = pyplot()
    counts = np.asarray(matrix, dtype=float)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Full evaluation report (evaluate subcommand, end of training)
# ---------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (stable: max subtracted)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against integer ``labels``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return float("nan")
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(labels.size), labels]))


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """ROC-AUC of each class against the rest, plus macro and support-weighted means.

    A class with no positive or no negative sample has no ROC curve: its AUC is None and it is left
    out of both means (sklearn's multi-class ``roc_auc_score`` would refuse the whole call instead).
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    per_class: dict[str, float | None] = {}
    defined: list[tuple[float, int]] = []
    for k, name in enumerate(class_names):
        positive = y_true == k
        if positive.all() or not positive.any():
            per_class[name] = None
            continue
        auc = float(roc_auc_score(positive, probs[:, k]))
        per_class[name] = auc
        defined.append((auc, int(positive.sum())))
    macro = float(np.mean([a for a, _ in defined])) if defined else None
    weighted = float(sum(a * n for a, n in defined) / sum(n for _, n in defined)) if defined else None
    return {"per_class": per_class, "macro": macro, "weighted": weighted}


def evaluation_report(
    y_true: Sequence[int] | np.ndarray,
    logits: np.ndarray,
    class_names: Sequence[str],
    temperature: float = 1.0,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Everything ``python -m training evaluate`` prints, from labels and raw logits.

    Accuracy; per-class precision/recall/F1/support/ROC-AUC; their macro and support-weighted means;
    the confusion matrix (rows = true, columns = predicted); one-vs-rest ROC-AUC; ECE and NLL of the
    raw softmax and of the temperature-scaled one (``temperature`` as stored in the model file). The
    argmax, hence every count-based metric, does not depend on the temperature.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    base = classification_metrics(y_true, y_pred, class_names)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    macro_p, macro_r, macro_f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    raw = softmax(logits) if len(logits) else np.zeros((0, len(labels)))
    scaled = softmax(logits, temperature) if len(logits) else raw
    auc = one_vs_rest_auc(y_true, raw, class_names)  # AUC is rank-based: the same with or without T
    for name in class_names:
        base["per_class"][name]["roc_auc"] = auc["per_class"][name]
    return {
        "n": base["n"],
        "accuracy": base["accuracy"],
        "macro_f1": base["macro_f1"],
        "macro_avg": {"precision": float(macro_p), "recall": float(macro_r), "f1": float(macro_f)},
        "weighted_avg": {"precision": float(precision), "recall": float(recall), "f1": float(f1)},
        "per_class": base["per_class"],
        "confusion_matrix": base["confusion_matrix"],
        "roc_auc_ovr": {"macro": auc["macro"], "weighted": auc["weighted"]},
        "temperature": float(temperature),
        "ece": {
            "n_bins": n_bins,
            "raw": expected_calibration_error(raw, y_true, n_bins),
            "calibrated": expected_calibration_error(scaled, y_true, n_bins),
        },
        "nll": {
            "raw": negative_log_likelihood(logits, y_true),
            "calibrated": negative_log_likelihood(logits, y_true, temperature),
        },
    }


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin: sample count, mean confidence, accuracy (equal-width bins, see ECE).

    Confidence is the top-1 probability; bin b holds confidences in ((b)/n, (b+1)/n], with 0 in bin 0.
    Empty bins have count 0 and confidence/accuracy NaN.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
    # ceil(c * n) - 1 puts c in (b/n, (b+1)/n]; clip puts c == 0 into bin 0.
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": accuracy.tolist(),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al. 2017, default 15 bins).

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|`` where confidence is the top-1
    probability and bin b covers (b/n, (b+1)/n] (0 goes to the first bin). Empty bins add nothing.
    NaN for no samples.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    bins = reliability_bins(probs, labels, n_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    gap = np.abs(np.nan_to_num(np.asarray(bins["accuracy"])) - np.nan_to_num(np.asarray(bins["confidence"])))
    return float((count * gap).sum() / count.sum())


#: Search range of the fitted temperature; hitting a bound means the logits carry no usable signal.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (temperature scaling, Guo et al.).

    Bounded 1-D search (scipy's bounded Brent, ``minimize_scalar(method="bounded")``) over the inverse
    temperature beta = 1/T in [1/bounds[1], 1/bounds[0]], in float64. Why beta: the mean NLL,
    ``mean(logsumexp(beta * z) - beta * z_y)``, is convex in beta, so the bounded search finds the global
    minimum without the learning rate, iteration budget or positivity reparametrisation an LBFGS fit
    on T needs. Deterministic; tolerance 1e-6 on beta.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    result = minimize_scalar(
        lambda beta: negative_log_likelihood(logits, labels, 1.0 / beta),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(1.0 / result.x)


def plot_reliability(
    curves: dict[str, dict[str, list[float]]], path: str | Path, title: str = "Reliability diagram"
) -> None:
    """Accuracy vs confidence per bin, one line per curve (e.g. raw and temperature-scaled), plus a
    histogram of confidences; the diagonal is perfect calibration. ``curves``: label -> reliability_bins.
    """
    plt = pyplot()
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for label, bins in curves.items():
        edges = np.asarray(bins["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        count = np.asarray(bins["count"])
        filled = count > 0
        ax.plot(np.asarray(bins["confidence"])[filled], np.asarray(bins["accuracy"])[filled], "o-", label=label)
        ax_hist.bar(centers, count, width=edges[1] - edges[0], alpha=0.5, label=label)
    ax.set(ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.set(xlabel="confidence (top-1 probability)", ylabel="samples")
    ax_hist.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
