"""Classifier stage: gathers faces from every camera into batches and emits one emotion event per frame."""
