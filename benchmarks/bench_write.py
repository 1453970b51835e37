"""Metadata write speed: seconds per ``write_score`` by format and file size.

For JPEG, TIFF, PNG and WebP photos (embedded) and a RAW (DNG, sidecar) of about 1 MB and 25 MB, each with
camera EXIF, GPS, a maker note, an ICC profile, an EXIF thumbnail and the user's keywords, prints the
median time of a write that changes the score (read, hash, modify in memory, verify, atomic replace) and of
an idempotent no-op write (read, hash, compare). Every measured write really changes the file: the score
alternates between two star buckets.

    python benchmarks/bench_write.py [--repeats 7] [--sizes 1,25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import imagegen  # noqa: E402  (the test helpers generate realistic photos)

from musiq_daemon.api import ScoreRecord  # noqa: E402
from musiq_daemon.metadata.writer import WritePolicy, write_score  # noqa: E402

# (width, height) per format and target size in MB, with the encoder settings that reach it. Pixels are a
# rendered scene tiled to size with fresh noise everywhere, so that no encoder gets a free ride on
# repetition; JPEG at quality 100 is what a 25 MB JPEG is in practice (high-resolution, low compression).
LAYOUTS: dict[str, dict[int, tuple[int, int, dict[str, object]]]] = {
    "JPEG": {1: (2400, 1600, {"quality": 90}), 25: (6600, 4400, {"quality": 100})},
    "TIFF": {1: (600, 560, {}), 25: (3000, 2800, {})},
    "PNG": {1: (860, 573, {"compress_level": 1}), 25: (4200, 2800, {"compress_level": 1})},
    "WebP": {
        1: (860, 573, {"lossless": True, "method": 0}),
        25: (4200, 2800, {"lossless": True, "method": 0}),
    },
    "sidecar (DNG)": {1: (720, 680, {}), 25: (3600, 3500, {})},
}
SUFFIX = {"JPEG": ".jpg", "TIFF": ".tif", "PNG": ".png", "WebP": ".webp", "sidecar (DNG)": ".dng"}


def noisy_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    tile = imagegen.scene(min(width, 1500), min(height, 1000), seed=seed)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    pixels = np.tile(tile, reps)[:height, :width].astype(np.int16)
    pixels += np.random.default_rng(seed).integers(-6, 7, size=pixels.shape, dtype=np.int16)
    out: np.ndarray = np.clip(pixels, 0, 255).astype(np.uint8)
    return out


def make(kind: str, size_mb: int, folder: Path) -> Path:
    width, height, kwargs = LAYOUTS[kind][size_mb]
    path = folder / f"IMG_{size_mb:02d}{SUFFIX[kind]}"
    if kind.startswith("sidecar"):
        return imagegen.make_dng(path, width, height, preview=(width // 4, height // 4))
    return imagegen.make_photo(path, width, height, rating=None, pixels=noisy_scene(width, height), **kwargs)


def record(score: float) -> ScoreRecord:
    return ScoreRecord(
        score=score,
        raw=(score - 1.0) * 25.0,
        model_id="koniq",
        model_version="1a2b3c4d5e6f",
        variant="dynamic-int8",
        model_sha256="0" * 64,
        scale_min=1.0,
        scale_max=5.0,
        resolution_policy="max_side=1024",
        device="cpu",
        num_tokens=512,
        scored_size=(768, 1024),
        stored_size=(1024, 768),
        source="dct-1/4",
        format="JPEG",
        orientation_applied=False,
        scored_at="2024-05-01T10:00:00+02:00",
    )


def time_writes(photo: Path, policy: WritePolicy, repeats: int) -> tuple[float, float]:
    """Median seconds of a changing write and of a no-op write of ``photo``."""
    records = [record(3.1), record(3.5)]  # 3 and 4 stars: every write changes score, stars and keyword
    write_score(photo, records[0], policy)  # the first write also creates the keyword containers
    changing, noop = [], []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        assert write_score(photo, records[i % 2], policy).changed
        changing.append(time.perf_counter() - start)
    for _ in range(repeats):
        start = time.perf_counter()
        assert not write_score(photo, records[repeats % 2], policy).changed
        noop.append(time.perf_counter() - start)
    return statistics.median(changing), statistics.median(noop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default="1,25", help="target file sizes in MB (1 and/or 25)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="musiqd-bench-write-") as tmp:
        for kind in LAYOUTS:
            for size_mb in sizes:
                folder = Path(tmp) / f"{kind.split()[0]}-{size_mb}"
                folder.mkdir()
                photo = make(kind, size_mb, folder)
                write_s, noop_s = time_writes(photo, WritePolicy(), args.repeats)
                rows.append((kind, photo.stat().st_size / 1e6, write_s, noop_s))
                print(f"  measured {kind}, {rows[-1][1]:.1f} MB", file=sys.stderr, flush=True)
    print(f"{'format':<15} {'file MB':>8} {'write ms':>9} {'no-op ms':>9}   (median of {args.repeats})")
    for kind, mb, write_s, noop_s in rows:
        print(f"{kind:<15} {mb:>8.1f} {write_s * 1000:>9.1f} {noop_s * 1000:>9.1f}")


if __name__ == "__main__":
    main()
