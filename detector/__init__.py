"""Detector stage: N worker processes that find faces in frames and send crops to the classifier.

Importable pieces: :mod:`detector.backends` (Haar, YuNet behind the ``FaceDetector`` protocol),
:mod:`detector.crops` (classifier crops), :mod:`detector.pipeline` (downscaled detection, one frame
to one Faces message) and :mod:`detector.worker` (the socket loop). ``python -m detector`` wires them.
"""
