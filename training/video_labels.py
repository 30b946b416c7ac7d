"""``python -m training video-labels --video V [detector options] [--emotion-model M] --out DIR``: the labels a
video gets, frame by frame, through the served detector, crops, model and face tracking.

Every frame of the video goes through :func:`detector.pipeline.build_extractor` (the detector's own
options: ``--backend``, ``--no-align``, ``--roll-passes``, ...), :class:`classifier.model.EmotionModel`
and :class:`classifier.tracking.CameraTracks`, in order and without drops, so two runs with other
options compare like for like. Writes ``events.jsonl`` in the event format (so ``python -m
sink.report`` reads it), the report (``report.json``: label distribution, tracks, label flips per
track, mean confidence) with its plots, and ``frames.png``, a few annotated frames. Prints the
summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emostream.settings_cli import add_arguments, from_args
from emostream.wire import EmotionEvent, FaceEmotion
from training.cli_support import emit, log, subcommand_parser

CAMERA = "video"
#: Annotated frames in frames.png, spread evenly over the video.
SHEET_FRAMES = 6


def label_video(
    video: Path, extractor: Any, model: Any, window: int, classify_every: int = 1, interval: int = 1
) -> tuple[list[EmotionEvent], list[np.ndarray], int]:
    """The event of every frame of ``video``, the frames themselves for pictures, and the faces the model
    scored (with ``classify_every`` > 1 tracked faces reuse their track's scores, as the classifier does).

    ``interval`` is the detector's: faces are detected on frames 0, N, 2N... and the frames between take
    the last key frame's boxes with crops of their own, as a pipeline's detector worker does."""
    from classifier.service import DIGITS
    from classifier.tracking import Tracker
    from emostream.wire import Faces

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"error: cannot open video {video}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    tracker = Tracker(window=window, classify_every=classify_every)
    names = list(model.class_names)
    events: list[EmotionEvent] = []
    frames: list[np.ndarray] = []
    scored = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        seq, ts = len(frames), len(frames) / fps
        found, crops = extractor.extract(image, CAMERA, key=seq % interval == 0)
        faces_message = Faces(CAMERA, seq, ts, ts, image.shape[:2], found.boxes, found.scores, crops)
        plan = tracker.plan([faces_message])
        probs = plan.fill(model.predict(crops[plan.classify]) if plan.classify.any() else np.empty((0, len(names))))
        scored += int(plan.classify.sum())
        ids, smoothed = tracker.update(CAMERA, seq, found.boxes, probs, ts, plan.classify)
        faces = []
        for i, (x, y, w, h) in enumerate(found.boxes.tolist()):
            top = int(np.argmax(smoothed[i]))
            faces.append(
                FaceEmotion(
                    box=(x, y, w, h),
                    emotion=names[top],
                    confidence=round(float(smoothed[i][top]), DIGITS),
                    scores={n: round(float(v), DIGITS) for n, v in zip(names, probs[i], strict=True)},
                    detector_score=round(float(found.scores[i]), DIGITS),
                    track=int(ids[i]),
                    smoothed={n: round(float(v), DIGITS) for n, v in zip(names, smoothed[i], strict=True)},
                    raw_emotion=names[int(np.argmax(probs[i]))],
                )
            )
        events.append(EmotionEvent(camera=CAMERA, frame=seq, ts_capture=ts, ts_event=ts, faces=tuple(faces)))
        frames.append(image)
    capture.release()
    if not frames:
        raise SystemExit(f"error: {video} has no frames that OpenCV can decode")
    return events, frames, scored


def contact_sheet(frames: Sequence[np.ndarray], events: Sequence[Any], path: Path, title: str) -> None:
    """A grid of annotated frames, evenly spread over the video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sink.annotate import draw_event

    picks = np.linspace(0, len(frames) - 1, min(SHEET_FRAMES, len(frames))).round().astype(int)
    cols = 3
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5, rows * 3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks, strict=False):
        annotated = draw_event(frames[i].copy(), events[i])
        ax.imshow(cv2.cvtColor(annotated, cv2.COLOR_BGR2RGB))
        ax.set_title(f"frame {i}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    from classifier.settings import ClassifierSettings
    from detector.settings import DetectorSettings

    p = subcommand_parser(
        "video-labels", "Label every frame of a video through the served detector, model and tracking; report them."
    )
    p.add_argument("--video", type=Path, required=True, help="a video file OpenCV can read")
    p.add_argument(
        "--emotion-model", default=None, help="emotion model file (.pt2); None = classifier/models/emotion.pt2"
    )
    p.add_argument(
        "--smoothing-window",
        type=int,
        default=ClassifierSettings.model_fields["smoothing_window"].default,
        help="frames each face track's scores are smoothed over, as the classifier serves them",
    )
    p.add_argument(
        "--classify-every",
        type=int,
        default=ClassifierSettings.model_fields["classify_every"].default,
        help="classify a tracked face at least every N frames, reusing its track's scores between, as the "
        "classifier serves them; 1: every face of every frame",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for events.jsonl, report.json and pictures")
    add_arguments(p.add_argument_group("detector (as python -m detector)"), DetectorSettings)
    return p


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    from classifier.model import EmotionModel
    from detector.pipeline import build_extractor
    from detector.settings import DetectorSettings
    from sink import report as sink_report

    settings = from_args(parser, DetectorSettings, args)
    if not args.video.is_file():
        parser.error(f"--video {args.video}: no such file")
    if args.smoothing_window < 1:
        parser.error("--smoothing-window must be at least 1")
    if args.classify_every < 1:
        parser.error("--classify-every must be at least 1")
    model = EmotionModel(args.emotion_model, device="cpu")
    events, frames, scored = label_video(
        args.video, build_extractor(settings), model, args.smoothing_window, args.classify_every, settings.interval
    )
    args.out.mkdir(parents=True, exist_ok=True)
    events_path = args.out / "events.jsonl"
    events_path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
    event_log = sink_report.read_log(events_path.read_bytes().splitlines())
    report = sink_report.build_report(event_log, str(events_path), None)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    sink_report.write_plots(event_log, report, args.out)
    setup = f"{settings.backend}, align {settings.align}, roll passes {list(settings.roll_passes)}, {model.path.name}"
    contact_sheet(frames, events, args.out / "frames.png", f"{args.video.name}: {setup}")
    overall = report["overall"]
    summary = {
        "video": str(args.video),
        "frames": len(frames),
        "model": str(model.path),
        "model_version": model.version,
        "detector": settings.model_dump(mode="json"),
        "smoothing_window": args.smoothing_window,
        "classify_every": args.classify_every,
        "faces_scored_by_the_model": scored,
        **{
            key: overall[key]
            for key in (
                "faces",
                "emotion_shares",
                "mean_confidence",
                "tracks",
                "label_flips_per_track",
                "raw_label_flips_per_track",
            )
        },
    }
    log(f"wrote events.jsonl, report.json, plots and frames.png in {args.out}")
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    emit(main(args, parser))
    return 0
