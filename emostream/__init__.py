"""Shared core of emostream: the wire format, metrics, model file and process runtime helpers.

Stage packages (capture, detector, classifier, sink) depend on this package and never on each other.
"""

__version__ = "0.1.0"
