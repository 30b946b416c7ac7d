"""Sink stage: re-publishes emotion events on a ZeroMQ PUB socket (topic = camera id) and to files."""
