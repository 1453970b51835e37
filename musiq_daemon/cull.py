"""Culling: bursts of near-identical shots, and the best-scored photo of each.

A burst is what a photographer shoots of one scene in a few seconds: frames from the same camera, each
taken within ``gap_s`` seconds of the previous one, that also look alike. Capture time and camera are
cheap to read and decide the candidates; a perceptual hash confirms them, so that two different scenes
shot in quick succession (a turn of the camera) stay apart. Photos are compared in capture order, and a
frame joins a burst whose last frame is at most ``gap_s`` older when it looks like any frame already in
it (a slow pan still makes one burst). Without a capture time nothing is grouped: a file's time says when
it was copied, not when it was shot.

The perceptual hash is the classic DCT hash: the image in grey at 32x32, its 2-D DCT, the 8x8 lowest
frequencies without the mean, one bit each for "above their median". Blur, recompression, a slight crop
or a change of size move a few of its 63 bits; another scene moves about half of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from musiq_daemon.decode import decode_image
from musiq_daemon.metadata.capture import read_capture

#: Seconds between two frames of one burst (a camera's burst mode shoots several a second; a
#: photographer re-framing by hand takes a second or two).
DEFAULT_GAP_S = 3.0
#: Hash bits (of 63) two frames of one burst may differ by. Frames of one scene differ by a handful (a
#: heavy blur or a slight crop: up to ~15), different scenes by ~30.
DEFAULT_MAX_DISTANCE = 18


@dataclass(frozen=True)
class Shot:
    """What grouping needs of one photo."""

    photo_id: int
    path: Path
    camera: str | None
    taken_ms: int | None  # capture time in ms since the epoch (sub-seconds included when recorded)
    phash: int | None  # 64-bit perceptual hash, as a signed integer
    score: float | None  # the photo's latest score of the culling model


@cache
def _dct_matrix(n: int = 32) -> npt.NDArray[np.float64]:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


def perceptual_hash(path: Path) -> int:
    """The photo's 64-bit DCT hash (signed). Decodes a small version only (JPEG DCT scaling)."""
    decoded = decode_image(path, min_long_side=128)
    grey = Image.fromarray(decoded.pixels).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    matrix = _dct_matrix()
    low = (matrix @ pixels @ matrix.T)[:8, :8].flatten()[1:]  # without the mean (DC)
    bits = low > np.median(low)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value - (1 << 63) if value >= 1 << 63 else value


def distance(a: int, b: int) -> int:
    """Bits that differ between two hashes."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def camera_and_time(path: Path) -> tuple[str | None, int | None]:
    """(EXIF make and model, capture time in ms since the epoch with sub-seconds), each None when the file
    does not say (see :func:`~musiq_daemon.metadata.capture.read_capture`: camera RAW formats included)."""
    capture = read_capture(path)
    taken = round(capture.taken.timestamp() * 1000) if capture.taken is not None else None
    return capture.camera, taken


def group_bursts(
    shots: Iterable[Shot], *, gap_s: float = DEFAULT_GAP_S, max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[list[Shot]]:
    """The bursts among ``shots`` (groups of two or more), each in capture order, the bursts in order of
    their first frame (see the module doc). Several bursts may be open at once: a photographer turning
    between two subjects makes two interleaved bursts, not a chain of broken ones."""
    timed = sorted(
        (s for s in shots if s.taken_ms is not None and s.phash is not None),
        key=lambda s: (s.camera or "", s.taken_ms or 0, s.photo_id),
    )
    gap_ms = gap_s * 1000
    open_groups: list[list[Shot]] = []
    done: list[list[Shot]] = []
    for shot in timed:
        assert shot.taken_ms is not None and shot.phash is not None
        still_open = []
        for group in open_groups:
            last = group[-1]
            assert last.taken_ms is not None
            if last.camera == shot.camera and shot.taken_ms - last.taken_ms <= gap_ms:
                still_open.append(group)
            else:
                done.append(group)
        open_groups = still_open
        home = next(
            (
                group
                for group in open_groups
                if any(m.phash is not None and distance(m.phash, shot.phash) <= max_distance for m in group)
            ),
            None,
        )
        if home is not None:
            home.append(shot)
        else:
            open_groups.append([shot])
    done.extend(open_groups)
    return sorted((g for g in done if len(g) > 1), key=lambda g: (g[0].taken_ms or 0, g[0].photo_id))


def best_of(burst: Sequence[Shot]) -> Shot | None:
    """The best-scored frame (the earliest of equals); None when no frame has a score yet."""
    scored = [s for s in burst if s.score is not None]
    if not scored:
        return None
    return max(scored, key=lambda s: (s.score, -(s.taken_ms or 0)))
