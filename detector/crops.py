"""Classifier input from detector boxes: square grayscale face crops.

Crop geometry. FER2013 images are tight, centred, frontal face crops, close to what the Haar cascade's
square box covers (brows-to-chin, cheek-to-cheek with a little hair and ears). So a crop is the square
of side ``max(w, h)`` centred on the box: exactly the Haar box, and for YuNet's narrower, taller box
close to Haar's square (measured on the shared media: docs/benchmarks.md, "Measurements behind defaults
and constants"). Where that square reaches past the frame it is clamped to the frame and the missing
part is padded by replicating the edge pixels, so the face stays centred as in FER2013 (shifting the
square inside the frame instead would move the face off-centre) and no artificial black border appears.
Resizing uses INTER_AREA, which averages instead of aliasing when shrinking.
"""

from __future__ import annotations

import cv2
import numpy as np


def crop_squares(boxes: np.ndarray) -> np.ndarray:
    """The crop square (x, y, side, side) of each xywh box, int32 (N, 4); may extend past the frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    side = np.maximum(np.maximum(boxes[:, 2], boxes[:, 3]), 1.0)
    cx = boxes[:, 0] + boxes[:, 2] / 2
    cy = boxes[:, 1] + boxes[:, 3] / 2
    x0 = np.round(cx - side / 2)
    y0 = np.round(cy - side / 2)
    side = np.round(side)
    return np.stack([x0, y0, side, side], axis=1).astype(np.int32)


def gray_region(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` (BGR or gray) in gray. Crops convert just the face's region: converting a
    whole 720p frame costs more than cutting its few face crops."""
    region = image[y0:y1, x0:x1]
    return region if region.ndim == 2 else cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)


def _square_crop(image: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    x1, y1 = max(x, 0), max(y, 0)
    x2, y2 = min(x + side, width), min(y + side, height)
    if x1 >= x2 or y1 >= y2:
        # Entirely outside the frame (a corrupt box): a flat grey crop rather than an exception.
        return np.full((side, side), 128, dtype=np.uint8)
    region = gray_region(image, x1, y1, x2, y2)
    top, left = y1 - y, x1 - x
    bottom, right = (y + side) - y2, (x + side) - x2
    if top or left or bottom or right:
        region = cv2.copyMakeBorder(region, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return region


def face_crops(image_bgr: np.ndarray, boxes: np.ndarray, size: int = 48) -> np.ndarray:
    """Grayscale ``size`` x ``size`` crops of the faces in ``boxes`` (xywh), uint8 (N, size, size)."""
    squares = crop_squares(boxes)
    out = np.empty((len(squares), size, size), dtype=np.uint8)
    if len(squares) == 0:
        return out
    for i, (x, y, side, _) in enumerate(squares):
        crop = _square_crop(image_bgr, int(x), int(y), int(side))
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return out
