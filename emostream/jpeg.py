"""JPEG headers read without decoding: how large an image a JPEG says it is, before anyone pays to
decode it (a small file can declare a huge image)."""

from __future__ import annotations

#: JPEG start-of-frame markers (baseline, extended, progressive, lossless...); C4, C8 and CC are not SOFs.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame segment without decoding it; None if there is none."""
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)  # the SOF comes before the scan data
    if buf[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(buf[i + 5 : i + 7], "big"), int.from_bytes(buf[i + 7 : i + 9], "big")
        if marker == 0xDA or length < 2:  # start of scan before any SOF, or a broken segment
            return None
        i += 2 + length
    return None
