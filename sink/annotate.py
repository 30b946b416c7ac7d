"""Draw emotion events on images: boxes, labels, face blurring. Pure numpy/OpenCV, no sockets.

Used by the recorder (``python -m sink.record``) and meant for any viewer: give it a BGR image (a
PREVIEW, or the full frame with ``scale=1``) and the ``faces`` event of that frame. Boxes in events are
in the pixels of the frame capture sent; ``scale`` maps them onto the image (a preview's ``scale``).
Both functions change ``image_bgr`` in place and return it.
"""

from __future__ import annotations

import cv2
import numpy as np

from emostream.boxes import box_corners
from emostream.wire import EmotionEvent, Event, FaceEmotion

#: BGR color per emotion: the box and the label background.
EMOTION_COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (0, 0, 230),  # red
    "disgust": (0, 140, 0),  # dark green
    "fear": (160, 0, 160),  # purple
    "happy": (0, 215, 255),  # yellow
    "sad": (230, 90, 0),  # blue
    "surprise": (0, 140, 255),  # orange
    "neutral": (190, 190, 190),  # grey
}
UNKNOWN_COLOR = (255, 255, 255)
#: Blocks across a face when pixelating: few enough that no feature survives.
PIXEL_BLOCKS = 8
#: The pixelated area reaches this fraction of the box beyond each side (hair, ears, a loose box).
BLUR_MARGIN = 0.15


def face_label(face: FaceEmotion) -> str:
    """``"<emotion> <confidence%> #<track>"``, e.g. ``"happy 87% #3"`` (no ``#`` part without a track)."""
    label = f"{face.emotion} {round(100 * float(face.confidence))}%"
    if face.track is not None:
        label += f" #{face.track}"
    return label


def _faces(event: Event | None) -> tuple[FaceEmotion, ...]:
    return event.faces if isinstance(event, EmotionEvent) else ()


def draw_event(image_bgr: np.ndarray, event: Event | None, scale: float = 1.0) -> np.ndarray:
    """Draw each face's box and label (color per emotion) onto ``image_bgr``."""
    thickness = max(2, round(min(image_bgr.shape[:2]) / 240))
    font_scale = max(0.4, min(image_bgr.shape[:2]) / 900)
    for face in _faces(event):
        corners = box_corners(face.box, scale, image_bgr.shape)
        if corners is None:
            continue
        x0, y0, x1, y1 = corners
        color = EMOTION_COLORS.get(face.emotion, UNKNOWN_COLOR)
        cv2.rectangle(image_bgr, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
        label = face_label(face)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Above the box when there is room, else inside its top edge.
        ty0 = y0 - th - base - 2 if y0 - th - base - 2 >= 0 else y0
        tx0 = min(x0, max(0, image_bgr.shape[1] - tw - 4))
        cv2.rectangle(image_bgr, (tx0, ty0), (tx0 + tw + 4, ty0 + th + base + 2), color, cv2.FILLED)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(
            image_bgr, label, (tx0 + 2, ty0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color, 1, cv2.LINE_AA
        )
    return image_bgr


def blur_faces(image_bgr: np.ndarray, event: Event | None, scale: float = 1.0) -> np.ndarray:
    """Blur every face of ``event`` (its box plus a margin) beyond recognition, in place.

    The face is reduced to :data:`PIXEL_BLOCKS` block means across (pixelation) and scaled back up
    bilinearly: unlike a Gaussian blur it keeps no fine detail that deblurring could recover, and unlike
    plain pixelation it leaves no block edges. Only faces the detector found are hidden; a face it
    missed stays visible.
    """
    for face in _faces(event):
        corners = box_corners(face.box, scale, image_bgr.shape, margin=BLUR_MARGIN)
        if corners is None:
            continue
        x0, y0, x1, y1 = corners
        roi = image_bgr[y0:y1, x0:x1]
        h, w = roi.shape[:2]
        blocks_x = max(1, min(w, PIXEL_BLOCKS))
        blocks_y = max(1, min(h, round(PIXEL_BLOCKS * h / w)))
        small = cv2.resize(roi, (blocks_x, blocks_y), interpolation=cv2.INTER_AREA)
        # Bilinear back up: smooth, so no block edges either; what is left is a few colors' gradient.
        image_bgr[y0:y1, x0:x1] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return image_bgr
