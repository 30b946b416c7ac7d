"""YuNet's network on ONNX Runtime, decoded as ``cv2.FaceDetectorYN`` decodes it.

The same .onnx file, the same input (the BGR image as float32, padded with zeros on the right and
bottom to a multiple of 32) and the same decoding (per stride 8, 16 and 32: score = sqrt(cls x obj),
box centre and landmarks offset from the cell, box side exp(.) x stride; then NMS on integer boxes),
so the faces match OpenCV's to float rounding (``tests/detector/test_yunet.py``). Why a second
runtime: ONNX Runtime runs this network about twice as fast as OpenCV's DNN module on one thread of
an AVX2 CPU (docs/benchmarks.md), and YuNet's forward passes are most of a detector worker's time.
"""

from __future__ import annotations

import numpy as np

#: YuNet's output strides and the multiple its input is padded to.
STRIDES = (8, 16, 32)
DIVISOR = 32


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) YuNet sees for an image of this size: each side rounded up to a multiple of 32."""
    return (-(-width // DIVISOR) * DIVISOR, -(-height // DIVISOR) * DIVISOR)


class OnnxYuNet:
    """``detect(image_bgr) -> (N, 15) float32`` rows like ``cv2.FaceDetectorYN.detect``'s: x, y, w, h,
    five landmarks (x, y), score; most confident first."""

    def __init__(
        self, model_path: str, score_threshold: float, nms_threshold: float = 0.3, top_k: int = 5000, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        from emostream.onnxmodel import session_options

        # One frame at a time on ``threads`` cores, as the classifier's sessions run.
        options = session_options(max(0, int(threads)))
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        expected = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES]
        if sorted(names) != sorted(expected):
            raise ValueError(f"{model_path} is not a YuNet model: outputs {names}, expected {expected}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = expected
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self._blob: np.ndarray | None = None  # the padded input, kept between frames of one size
        self._grids: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}

    def _input(self, image_bgr: np.ndarray) -> np.ndarray:
        height, width = image_bgr.shape[:2]
        pad_w, pad_h = padded_size(width, height)
        if self._blob is None or self._blob.shape[2:] != (pad_h, pad_w):
            self._blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        # HWC uint8 -> CHW float32 in place; the zero padding right and below is never written.
        np.copyto(self._blob[0, :, :height, :width], image_bgr.transpose(2, 0, 1), casting="unsafe")
        return self._blob

    def _grid(self, pad_w: int, pad_h: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per stride, each output row's cell column and row (float32), row-major as the network emits them."""
        key = (pad_w, pad_h)
        if key not in self._grids:
            cells = []
            for stride in STRIDES:
                rows, cols = pad_h // stride, pad_w // stride
                r, c = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
                cells.append((c.astype(np.float32), r.astype(np.float32)))
            self._grids[key] = cells
        return self._grids[key]

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"YuNet takes HxWx3 BGR images, got shape {image_bgr.shape}")
        blob = self._input(image_bgr)
        outputs = dict(
            zip(self.output_names, self.session.run(self.output_names, {self.input_name: blob}), strict=True)
        )
        pad_h, pad_w = blob.shape[2:]
        rows = []
        for stride, (col, row) in zip(STRIDES, self._grid(pad_w, pad_h), strict=True):
            cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0, 1)
            obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            keep = np.flatnonzero(score >= self.score_threshold)
            if not len(keep):
                continue
            bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
            kps = outputs[f"kps_{stride}"].reshape(-1, 10)[keep]
            c, r = col[keep, None], row[keep, None]
            centre = np.hstack([c + bbox[:, :1], r + bbox[:, 1:2]]) * stride
            side = np.exp(bbox[:, 2:4]) * stride
            marks = (kps.reshape(-1, 5, 2) + np.stack([c, r], axis=2)) * stride
            rows.append(np.hstack([centre - side / 2, side, marks.reshape(-1, 10), score[keep, None]]))
        if not rows:
            return np.zeros((0, 15), np.float32)
        faces = np.vstack(rows).astype(np.float32)
        # OpenCV's NMS on the boxes truncated to integers, as FaceDetectorYN does.
        boxes = faces[:, :4].astype(np.int32).tolist()
        keep = np.asarray(
            _nms(boxes, faces[:, 14].tolist(), self.score_threshold, self.nms_threshold, self.top_k), np.int64
        ).reshape(-1)
        return faces[keep]


def _nms(boxes: list[list[int]], scores: list[float], score_threshold: float, nms: float, top_k: int) -> np.ndarray:
    import cv2

    return np.asarray(cv2.dnn.NMSBoxes(boxes, scores, score_threshold, nms, eta=1.0, top_k=top_k))
