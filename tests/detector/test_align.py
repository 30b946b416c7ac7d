"""Aligned crops (detector.align): the geometry on hand-made landmarks, and real faces turned upright."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.align import (
    FER2013_TEMPLATE,
    MIRRORED_LANDMARKS,
    aligned_crops,
    alignment_matrices,
    frontal_faces,
    landmark_misfit,
    refine_landmarks,
    roll_degrees,
    similarity_transform,
    similarity_transforms,
)
from detector.backends import YUNET_MODEL, YuNetDetector
from detector.crops import face_crops
from detector.detections import Detections
from support import SHARED

MEDIA = SHARED / "media"


def rotation(degrees: float, centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix rotating by ``degrees`` clockwise on screen about ``centre`` (cv2's convention negated)."""
    return cv2.getRotationMatrix2D(centre, -degrees, 1.0)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    src = np.array([[10.0, 10], [40, 12], [25, 30], [14, 45], [37, 44]])
    angle, scale, shift = np.radians(23.0), 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_transforms_fit_each_face_of_a_batch_on_its_own() -> None:
    rng = np.random.default_rng(0)
    faces = FER2013_TEMPLATE * rng.uniform(40, 200, (6, 1, 1)) + rng.uniform(0, 600, (6, 1, 2))
    faces += rng.normal(0, 3, faces.shape)  # landmarks as a detector gives them: not an exact similarity
    faces[3] *= [-1, 1]  # a mirrored face: its best fit would be a reflection, which is excluded
    target = FER2013_TEMPLATE * 48
    batch = similarity_transforms(faces, target)
    assert batch.shape == (6, 2, 3)
    for face, matrix in zip(faces, batch, strict=True):
        # The same fit solved another way: a similarity [[a, -b], [b, a]] + t is linear in (a, b, tx, ty),
        # and no such matrix is a reflection.
        x, y = face[:, 0], face[:, 1]
        one, zero = np.ones_like(x), np.zeros_like(x)
        design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        a, b, tx, ty = np.linalg.lstsq(design, np.concatenate([target[:, 0], target[:, 1]]), rcond=None)[0]
        np.testing.assert_allclose(matrix, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    assert similarity_transforms(np.zeros((0, 5, 2)), FER2013_TEMPLATE).shape == (0, 2, 3)


def test_known_landmarks_give_the_known_roll_and_map_onto_the_template() -> None:
    upright = FER2013_TEMPLATE * 200 + [300, 100]
    assert abs(float(roll_degrees(upright)[0])) < 1e-9
    for degrees in (-30.0, -15.0, 15.0, 30.0):
        tilted = apply(rotation(degrees, (400, 200)), upright)
        assert float(roll_degrees(tilted)[0]) == pytest.approx(degrees, abs=1e-6)
        (matrix,) = alignment_matrices(tilted[None], 48)
        # The alignment undoes the roll exactly: the landmarks land on the template.
        np.testing.assert_allclose(apply(matrix, tilted), FER2013_TEMPLATE * 48 - 0.5, atol=1e-6)
        assert np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])) == pytest.approx(-degrees, abs=1e-6)


def test_template_is_upright_and_mirror_symmetric() -> None:
    t = FER2013_TEMPLATE
    assert t[0, 1] == t[1, 1] and t[3, 1] == t[4, 1]  # eye line and mouth line level
    np.testing.assert_allclose(t[list(MIRRORED_LANDMARKS), 0], 1 - t[:, 0])  # mirror image of itself
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth


def real_face(name: str) -> np.ndarray:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"shared test media {path} is missing (see shared/media/SOURCE.md)")
    image = cv2.imread(str(path))
    assert image is not None
    return image


@pytest.mark.parametrize("degrees", [-30.0, -15.0, 15.0, 30.0])
@pytest.mark.parametrize("name", ["lena.jpg", "grace_hopper.jpg"])
def test_a_real_face_rotated_by_a_known_angle_comes_back_upright(name: str, degrees: float) -> None:
    image = real_face(name)
    detector = YuNetDetector(YUNET_MODEL)
    upright = detector.detect(image)
    assert len(upright) == 1
    height, width = image.shape[:2]
    # Rotate the whole photo about the face centre, on a larger canvas so the face stays whole.
    x, y, w, h = upright.boxes[0]
    turn = rotation(degrees, (x + w / 2, y + h / 2))
    rotated = cv2.warpAffine(image, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    found = refine_landmarks(rotated, detector.detect(rotated), detector)
    assert len(found) >= 1
    best = int(np.argmax(found.scores))
    lm = found.landmarks[best : best + 1]
    measured_roll = float(roll_degrees(lm)[0]) - float(roll_degrees(upright.landmarks)[0])
    # YuNet's landmarks are a few pixels off, so the roll it measures is too, by some degrees.
    assert measured_roll == pytest.approx(degrees, abs=7.0)
    # The alignment of the rotated face is upright within a degree of the upright face's alignment:
    # compose it with the known rotation and compare to the upright face's own matrix.
    (m_rot,) = alignment_matrices(lm, 48)
    (m_up,) = alignment_matrices(upright.landmarks, 48)
    composed = m_rot[:, :2] @ turn[:, :2]
    residual = np.degrees(np.arctan2(composed[1, 0], composed[0, 0]) - np.arctan2(m_up[1, 0], m_up[0, 0]))
    assert abs(residual) < 1.0 + abs(measured_roll - degrees), "the crop is not turned by the measured roll"
    crops = aligned_crops(rotated, lm, 48)
    reference = aligned_crops(image, upright.landmarks, 48)
    assert crops.shape == (1, 48, 48) and crops.dtype == np.uint8

    def similarity(crop: np.ndarray) -> float:
        return float(np.corrcoef(crop.ravel().astype(float), reference[0].ravel().astype(float))[0, 1])

    # Turned upright, the crop looks more like the upright face's than the plain square crop does.
    leaning = face_crops(rotated, found.boxes[best : best + 1], 48)[0]
    assert similarity(crops[0]) > similarity(leaning) + 0.05, (similarity(crops[0]), similarity(leaning))


def test_large_faces_are_area_averaged_and_land_where_the_small_path_puts_them() -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((720, 1280)) * 255).astype(np.uint8), (0, 0), 6)
    lm = FER2013_TEMPLATE * 400 + [300, 150]  # a 400 px face: shrunk ~8x, through the area path
    big = aligned_crops(image, lm[None], 48)[0].astype(float)
    (matrix,) = alignment_matrices(lm[None], 48)
    direct = cv2.warpAffine(cv2.GaussianBlur(image, (0, 0), 3), matrix, (48, 48), flags=cv2.INTER_LINEAR)
    assert np.abs(big - direct).mean() < 3.0


def test_crops_of_a_colour_frame_are_those_of_its_gray_frame_though_only_the_faces_are_converted() -> None:
    image = real_face("grace_hopper.jpg")
    height, width = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    found = YuNetDetector(YUNET_MODEL).detect(image)
    assert len(found) == 1 and found.landmarks is not None
    face = found.landmarks[0]
    centre = face.mean(0)
    faces = np.stack(
        [
            face,  # as found: shrunk ~4x, the area path
            (face - centre) / 4 + centre,  # a quarter of the size: the bilinear path
            (face - centre) / 4 + [3, height / 2],  # the same, half past the left edge
            (face - centre) * 2 + [width - 10, height - 10],  # large and past the bottom-right corner
        ]
    )
    for crops in (aligned_crops, lambda img, lm, size: face_crops(img, crop_squares_of(lm), size)):
        from_colour, from_gray = crops(image, faces, 48), crops(gray, faces, 48)
        assert np.array_equal(from_colour, from_gray)
        assert all(crop.std() > 5 for crop in from_colour)  # each crop holds part of the photo
    # Where the warp samples the frame directly, the crop is the whole gray frame's warp, edge pixels
    # repeated past the frame: the region converted holds every pixel the interpolation reads.
    for i in (1, 2):
        (matrix,) = alignment_matrices(faces[i : i + 1], 48)
        assert np.hypot(matrix[0, 0], matrix[0, 1]) >= 0.5
        direct = cv2.warpAffine(gray, matrix, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.array_equal(aligned_crops(image, faces[i : i + 1], 48)[0], direct)
    # A face wholly outside the frame (a corrupt one) gives a flat grey crop, as a box there does.
    outside = face + [3 * width, 0]
    assert (aligned_crops(image, outside[None], 48) == 128).all()


def crop_squares_of(landmarks: np.ndarray) -> np.ndarray:
    """A box (x, y, w, h) around each face's landmarks (N, 5, 2), for the square-crop path."""
    low, high = landmarks.min(1), landmarks.max(1)
    return np.hstack([low - (high - low) / 2, (high - low) * 2])


def test_no_faces_give_an_empty_stack() -> None:
    out = aligned_crops(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 5, 2)), 48)
    assert out.shape == (0, 48, 48) and out.dtype == np.uint8


def test_landmark_misfit_is_zero_for_any_similar_copy_of_the_template_and_grows_with_distortion() -> None:
    moved = apply(rotation(37.0, (0.5, 0.5)), FER2013_TEMPLATE) * 180.0 + [300.0, 40.0]
    np.testing.assert_allclose(landmark_misfit(np.stack([FER2013_TEMPLATE, moved])), [0.0, 0.0], atol=1e-12)
    # Nose tip pushed sideways by d (in template units, at any scale): the misfit grows with d.
    misfits = []
    for d in (0.02, 0.05, 0.1, 0.2):
        face = FER2013_TEMPLATE.copy()
        face[2, 0] += d
        misfits.append(float(landmark_misfit((face * 90.0)[None])[0]))
    assert misfits == sorted(misfits) and misfits[0] > 0
    # A profile-like layout: every landmark on one side of the face, eyes almost on top of each other.
    profile = np.array([[0.60, 0.38], [0.66, 0.38], [0.78, 0.59], [0.64, 0.76], [0.70, 0.76]]) * 100
    assert landmark_misfit(profile[None])[0] > 0.07 > landmark_misfit((FER2013_TEMPLATE * 100)[None])[0]


def test_frontal_faces_drops_only_unconfident_faces_whose_landmarks_misfit() -> None:
    frontal = FER2013_TEMPLATE * 60 + 100
    profile = np.array([[0.60, 0.38], [0.66, 0.38], [0.78, 0.59], [0.64, 0.76], [0.70, 0.76]]) * 60 + 100
    boxes = np.array([[100, 100, 60, 60]] * 4)
    found = Detections(boxes, np.array([0.9, 0.9, 0.7, 0.7]), np.stack([frontal, profile, frontal, profile]))
    kept = frontal_faces(found, confident_score=0.85, max_misfit=0.07)
    np.testing.assert_allclose(kept.scores, [0.9, 0.9, 0.7])
    assert kept.landmarks is not None
    np.testing.assert_allclose(kept.landmarks[2], frontal)
    # A confident_score at or below every score turns the check off; faces without landmarks (Haar) stay.
    assert len(frontal_faces(found, confident_score=0.7, max_misfit=0.07)) == 4
    haar = Detections(boxes, np.array([0.5, 0.5, 0.5, 0.5]))
    assert len(frontal_faces(haar, confident_score=0.85, max_misfit=0.07)) == 4
