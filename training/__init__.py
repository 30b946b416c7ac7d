"""Training tools for the emostream emotion classifier: ``python -m training --help``."""
