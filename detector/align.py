"""Upright, FER2013-framed face crops from YuNet's five landmarks.

FER2013's faces are roughly upright and centred, so a face that leans in the frame loses accuracy
when it is cropped as it leans. Each face's landmarks (eyes, nose tip, mouth corners) are mapped by
the similarity transform (rotation, uniform scale, shift) that best fits them, in least squares, to
:data:`FER2013_TEMPLATE`: where those landmarks sit, on average, in FER2013's own 48x48 images.
The template was measured, not chosen by eye: ``python -m training framing`` runs YuNet on FER2013
Training images and writes the mean positions (mirror-symmetrised, since training flips faces).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from detector.crops import gray_region
from detector.detections import Detections

if TYPE_CHECKING:
    from detector.backends import FaceDetector

#: YuNet's landmark order (the subject's right eye is on the image's left).
LANDMARKS = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")
#: For each landmark, the index of its mirror image's (right <-> left): the order of a face flipped sideways.
MIRRORED_LANDMARKS = tuple(
    LANDMARKS.index({"right": "left", "left": "right"}.get(side, side) + "_" + part)
    for side, _, part in (name.partition("_") for name in LANDMARKS)
)

#: Landmark positions in a FER2013 image, as fractions of its side (x, y), from
#: ``python -m training framing --data ../shared/data/fer2013/fer2013.csv.gz`` (see training/framing.py).
FER2013_TEMPLATE = np.array(
    [
        [0.3193, 0.3771],
        [0.6807, 0.3771],
        [0.5000, 0.5900],
        [0.3536, 0.7591],
        [0.6464, 0.7591],
    ],
    dtype=np.float64,
)


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(N, 2, 3) matrices, one per point set: the rotation + uniform scale + shift that maps points
    ``src`` closest to ``dst`` in least squares (Umeyama's method, reflections excluded). ``src`` and
    ``dst`` are (K, 2) or (N, K, 2); a (K, 2) set is used for every one of the N."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src, dst = np.broadcast_arrays(src.reshape((-1, *src.shape[-2:])), dst.reshape((-1, *dst.shape[-2:])))
    count, points = src.shape[:2]
    if not count:
        return np.zeros((0, 2, 3))
    mu_s, mu_d = src.mean(1), dst.mean(1)
    s, d = src - mu_s[:, None], dst - mu_d[:, None]
    var_s = (s**2).sum((1, 2)) / points
    cov = np.einsum("nki,nkj->nij", d, s) / points
    u, sigma, vt = np.linalg.svd(cov)
    # diag(1, +-1): the second axis flipped where the best fit would be a reflection.
    signs = np.ones((count, 2))
    signs[np.linalg.det(u) * np.linalg.det(vt) < 0, 1] = -1.0
    rotation = (u * signs[:, None, :]) @ vt
    safe_var = np.where(var_s > 0, var_s, 1.0)
    scale = np.where(var_s > 0, (sigma * signs).sum(1) / safe_var, 1.0)
    shift = mu_d - scale[:, None] * np.einsum("nij,nj->ni", rotation, mu_s)
    return np.concatenate([scale[:, None, None] * rotation, shift[:, :, None]], axis=2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of :func:`similarity_transforms` for one pair of point sets (K, 2)."""
    return similarity_transforms(np.reshape(src, (-1, 2)), np.reshape(dst, (-1, 2)))[0]


def roll_degrees(landmarks: np.ndarray) -> np.ndarray:
    """In-plane head roll of each face (N, 5, 2) in degrees, positive clockwise on screen (y down):
    the rotation of the least-squares fit of :data:`FER2013_TEMPLATE` onto all five landmarks, which
    is steadier than the eye line alone."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    fits = similarity_transforms(FER2013_TEMPLATE, lm)
    return np.degrees(np.arctan2(fits[:, 1, 0], fits[:, 0, 0]))


def landmark_misfit(landmarks: np.ndarray, template: np.ndarray = FER2013_TEMPLATE) -> np.ndarray:
    """How far each face's five landmarks (N, 5, 2) are from a frontal face's layout: the RMS distance,
    as a fraction of the crop's side, between ``template`` and the landmarks mapped onto it by their
    best rotation, scale and shift (:func:`similarity_transforms`). About 0.02 for a face seen from the
    front; a head turned to profile, the back of a head or a face-like pattern elsewhere lands its
    landmarks where no frontal face has them (docs/model.md, "Faces the detector should not report")."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    fits = similarity_transforms(lm, template)
    mapped = np.einsum("nij,nkj->nki", fits[:, :, :2], lm) + fits[:, None, :, 2]
    return np.sqrt(((mapped - template) ** 2).sum(-1).mean(-1))


def frontal_faces(found: Detections, confident_score: float, max_misfit: float) -> Detections:
    """``found`` less each face scoring under ``confident_score`` whose landmarks lie further than
    ``max_misfit`` from a frontal face's (:func:`landmark_misfit`). Faces without landmarks stay."""
    if found.landmarks is None or not len(found):
        return found
    doubtful = found.scores < confident_score
    if not doubtful.any():
        return found
    keep = ~doubtful | (landmark_misfit(found.landmarks) <= max_misfit)
    return found if keep.all() else found[keep]


def alignment_matrices(landmarks: np.ndarray, size: int, template: np.ndarray = FER2013_TEMPLATE) -> np.ndarray:
    """(N, 2, 3) matrices taking frame pixels to ``size`` x ``size`` crop pixels for faces (N, 5, 2)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    # Pixel centres: a crop pixel (i, j) covers [i, i+1), so a template fraction f sits at f * size - 0.5.
    return similarity_transforms(lm, template * size - 0.5)


def aligned_crops(image: np.ndarray, landmarks: np.ndarray, size: int = 48) -> np.ndarray:
    """Grayscale upright crops, uint8 (N, size, size), of the faces whose landmarks are ``landmarks``
    (N, 5, 2) in ``image`` (BGR or gray) pixels. Past the frame's edge, edge pixels are repeated."""
    matrices = alignment_matrices(landmarks, size)
    out = np.empty((len(matrices), size, size), dtype=np.uint8)
    for i, matrix in enumerate(matrices):
        out[i] = _warp(image, matrix, size)
    return out


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    # The frame pixels the crop samples, one more on each side for the interpolation: only they are made gray.
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    height, width = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return np.full((size, size), 128, dtype=np.uint8)  # entirely outside the frame (a corrupt face)
    gray = gray_region(image, cx0, cy0, cx1, cy1)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    if scale >= 0.5:
        # Crop pixel A p + t of frame pixel p = q + (cx0, cy0) of the region: A q + (A (cx0, cy0) + t).
        m = matrix.copy()
        m[:, 2] += matrix[:, :2] @ np.array([cx0, cy0], dtype=np.float64)
        return cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Shrinking by more than 2x with bilinear sampling aliases (FER2013's faces were area-averaged):
    # area-resize just the face's region first, so that the warp itself shrinks by 2x at most.
    region = cv2.copyMakeBorder(gray, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_REPLICATE)
    factor = 2.0 * scale
    rh, rw = region.shape
    dsize = (max(1, round(rw * factor)), max(1, round(rh * factor)))
    small = cv2.resize(region, dsize, interpolation=cv2.INTER_AREA)
    f = np.array([dsize[0] / rw, dsize[1] / rh])
    # Frame pixel p lies at q = (p - origin + 0.5) * f - 0.5 in ``small`` (pixel centres), so the crop
    # pixel A p + t is (A / f) q + A (origin - 0.5 + 0.5 / f) + t.
    m = matrix.copy()
    m[:, :2] = matrix[:, :2] / f
    m[:, 2] += matrix[:, :2] @ (np.array([x0, y0], dtype=np.float64) - 0.5 + 0.5 / f)
    return cv2.warpAffine(small, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


#: Faces whose measured roll is under this many degrees are aligned from their first landmarks.
REFINE_MIN_ROLL = 5.0
#: How far refining a tilted face's landmarks can lower their misfit (docs/model.md): a face under
#: ``confident_score`` whose first landmarks misfit by more than the limit plus this is rejected at once,
#: without the patch its refinement would cost.
REFINE_MISFIT_SLACK = 0.03
#: Largest side, in pixels, of the upright patch a tilted face is detected again in.
REFINE_PATCH = 256


def detect_upright_patch(image: np.ndarray, box: np.ndarray, roll: float, detector: FaceDetector) -> Detections | None:
    """The face around ``box`` (x, y, w, h in ``image`` pixels) detected again on a patch turned
    upright by ``roll`` degrees (clockwise), or None when the patch shows no face near its centre.

    The patch is twice the box's side, shrunk to at most :data:`REFINE_PATCH` pixels. The face comes
    back in ``image`` pixels as :class:`detector.backends.RolledPasses` maps its faces: landmarks
    exactly, the box centred on the face and as large as the upright face's box.
    """
    x, y, w, h = (float(v) for v in box)
    side = 2.0 * max(w, h, 1.0)
    size = int(min(round(side), REFINE_PATCH))
    # Patch pixels from frame pixels: rotate by -roll about the box centre, scale, centre the face.
    to_patch = np.asarray(cv2.getRotationMatrix2D((x + w / 2, y + h / 2), float(roll), size / side), np.float64)
    to_patch[:, 2] += size / 2 - np.array([x + w / 2, y + h / 2])
    patch = cv2.warpAffine(image, to_patch, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    again = detector.detect(patch)
    if again.landmarks is None or not len(again):
        return None
    centres = again.boxes[:, :2] + again.boxes[:, 2:] / 2
    nearest = int(np.argmin(np.linalg.norm(centres - size / 2, axis=1)))
    if np.linalg.norm(centres[nearest] - size / 2) > size / 4:
        return None  # another face in the patch, not this one
    to_frame = cv2.invertAffineTransform(to_patch)
    scale = float(np.hypot(to_frame[0, 0], to_frame[0, 1]))
    centre = centres[nearest] @ to_frame[:, :2].T + to_frame[:, 2]
    sides = again.boxes[nearest, 2:] * scale
    landmarks = again.landmarks[nearest] @ to_frame[:, :2].T + to_frame[:, 2]
    return Detections(
        np.round(np.hstack([centre - sides / 2, sides]))[None], again.scores[nearest : nearest + 1], landmarks[None]
    )


def refine_landmarks(
    image: np.ndarray, found: Detections, detector: FaceDetector, min_roll: float = REFINE_MIN_ROLL
) -> Detections:
    """``found`` with the landmarks of each tilted face measured again on an upright patch.

    A landmark regressor trained mostly on upright faces reads a tilted face as less tilted than it
    is, so one alignment leaves part of the roll. Each face whose roll is at least ``min_roll``
    degrees is rotated upright by that roll in a patch twice its box's size, detected again there
    (:func:`detect_upright_patch`), and its landmarks are mapped back to ``image`` pixels.
    Boxes and scores stay as found; a face not found again keeps its first landmarks.
    """
    if found.landmarks is None or not len(found):
        return found
    rolls = roll_degrees(found.landmarks)
    landmarks = found.landmarks.copy()
    for i in np.flatnonzero(np.abs(rolls) >= min_roll):
        again = detect_upright_patch(image, found.boxes[i], float(rolls[i]), detector)
        if again is not None and again.landmarks is not None:
            landmarks[i] = again.landmarks[0]
    return Detections(found.boxes, found.scores, landmarks)
