"""Launcher: one YAML config starts, supervises and stops every stage process."""
