"""Capture stage: one process per camera that grabs frames and pushes them to the detector workers.

Importable pieces: :mod:`capture.sources` (demo, camera index, file and URL sources),
:mod:`capture.stream` (pacing, fps limit, resize, looping and reconnecting around a source) and
:mod:`capture.sender` (the ZeroMQ PUSH side with its drop policy). ``python -m capture`` wires them.
"""
