"""The child process of the crash test: rewrites photos through the safe write path until it is killed.

Usage: ``python crash_writer.py FILE...``. Each file holds version A or version B of a photo: the same
bytes except for one block (:data:`BLOCK_A` or :data:`BLOCK_B`, of different lengths, so that a mix or a
cut of the two is never mistaken for either). In a loop, every file is read with ``read_snapshot`` and
replaced with its other version through ``atomic_replace``, as musiqd does when it writes a score. The
parent kills this process at random moments and checks that every file is still exactly A or B.
"""

from __future__ import annotations

import sys
from pathlib import Path

from musiq_daemon.metadata.safefile import atomic_replace, read_snapshot


def _comment_segment(text: bytes) -> bytes:
    """A JPEG COM segment (harmless anywhere in these files: the TIFFs carry it after their image data)."""
    return b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text


BLOCK_A = _comment_segment(b"musiqd crash test: version A " + b"a" * 1000)
BLOCK_B = _comment_segment(b"musiqd crash test: version B, a longer block " + b"b" * 3000)


def other_version(data: bytes) -> bytes:
    """Version B of version A's bytes and vice versa."""
    if BLOCK_A in data:
        return data.replace(BLOCK_A, BLOCK_B, 1)
    if BLOCK_B in data:
        return data.replace(BLOCK_B, BLOCK_A, 1)
    raise SystemExit("crash_writer: a file holds neither version A nor version B")


def main(paths: list[Path]) -> None:
    print("ready", flush=True)  # the parent starts its random delay when the writing starts
    while True:
        for path in paths:
            data, signature = read_snapshot(path)
            atomic_replace(path, other_version(data), expected=signature)


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
