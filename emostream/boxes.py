"""Face boxes as ``(N, 4)`` arrays of ``[x, y, w, h]`` in pixels: IoU, scaling between image sizes,
clipping to a frame. The one place box arithmetic lives; detector, classifier, sink and bench use it."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_boxes(boxes: Any, dtype: Any = np.float64) -> np.ndarray:
    """``boxes`` as an ``(N, 4)`` array of ``dtype`` (an empty input gives ``(0, 4)``)."""
    return np.asarray(boxes, dtype=dtype).reshape(-1, 4)


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every one of ``b`` (M, 4): an (N, M) float array; boxes
    with no area overlap nothing."""
    a, b = as_boxes(a), as_boxes(b)
    ax1, ay1 = a[:, 0:1], a[:, 1:2]
    ax2, ay2 = ax1 + a[:, 2:3], ay1 + a[:, 3:4]
    bx1, by1 = b[:, 0], b[:, 1]
    bx2, by2 = bx1 + b[:, 2], by1 + b[:, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    area_a = np.clip(a[:, 2:3], 0, None) * np.clip(a[:, 3:4], 0, None)
    area_b = np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def scale_boxes(boxes: Any, from_shape: tuple[int, ...], to_shape: tuple[int, ...]) -> np.ndarray:
    """Map boxes from an image of ``from_shape`` to one of ``to_shape`` ((h, w, ...)), rounded to int32."""
    sy = to_shape[0] / from_shape[0]
    sx = to_shape[1] / from_shape[1]
    scaled = as_boxes(boxes) * np.array([sx, sy, sx, sy])
    return np.round(scaled).astype(np.int32)


def clip_boxes(boxes: Any, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Boxes (int32) clipped to a frame of ``frame_shape`` ((h, w, ...)): only pixels that exist."""
    boxes = as_boxes(boxes, np.int32)
    height, width = frame_shape[:2]
    x1 = np.clip(boxes[:, 0], 0, width)
    y1 = np.clip(boxes[:, 1], 0, height)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).astype(np.int32)


def box_corners(
    box: Any, scale: float, shape: tuple[int, ...], margin: float = 0.0
) -> tuple[int, int, int, int] | None:
    """One box, scaled by ``scale`` and grown by ``margin`` of its size on each side, as corners
    ``(x0, y0, x1, y1)`` clipped to an image of ``shape``; None when nothing of it is inside."""
    x, y, w, h = (float(v) * scale for v in box)
    x, y, w, h = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(shape[1], int(round(x + w))), min(shape[0], int(round(y + h)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1
