"""Culling on a large library: what `musiqd cull` costs the first time (reading each photo's camera, capture
time and perceptual hash) and every time (grouping), and what marking the best costs.

    python benchmarks/bench_cull.py [--photos DIR] [--shots 100000] [--repeats 3]

Rows:
- features per photo, by photo size: camera + capture time (EXIF header only) and the perceptual hash (a
  small decode: JPEG DCT scaling), on the real photos of DIR (``benchmarks/photos.py`` makes them) at their
  own size and re-encoded at 24 MP; median over the photos;
- grouping ``--shots`` photos that are already read (pure Python; what `cull` costs once the features are
  in the index), with bursts of 2 to 10 frames every few minutes;
- one best-of-burst keyword write into a 24 MP JPEG (read, splice the XMP, verify, replace).
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StealMeter, machine
from PIL import Image

from musiq_daemon.cull import Shot, camera_and_time, group_bursts, perceptual_hash
from musiq_daemon.metadata.writer import write_best_of_burst


def median_ms(action: object, items: list[Path], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for item in items:
            begin = time.perf_counter()
            action(item)  # type: ignore[operator]
            times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def synthetic_shots(count: int, seed: int = 0) -> list[Shot]:
    """A library's worth of shots: bursts of 2-10 frames (alike) among single photos, minutes apart."""
    rng = random.Random(seed)
    shots: list[Shot] = []
    taken = 1_700_000_000_000
    while len(shots) < count:
        taken += rng.randint(30_000, 600_000)
        scene = rng.getrandbits(63)
        for _ in range(rng.choice([1, 1, 1, 2, 3, 5, 10])):
            taken += rng.randint(100, 1500)
            phash = scene ^ (1 << rng.randrange(63))
            shots.append(
                Shot(len(shots), Path(f"/p/{len(shots)}.jpg"), "cam", taken, phash, rng.random() * 4 + 1)
            )
    return shots[:count]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path.home() / ".cache/musiqd-bench/photos")
    parser.add_argument("--shots", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"bench_cull.py: no photos in {args.photos}: run benchmarks/photos.py first")
    print(f"machine: {machine()}")
    print(f"{'what':<50}{'median ms':>10}{'steal':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        big = []
        for i, photo in enumerate(photos[:12]):
            with Image.open(photo) as img:
                exif = img.info.get("exif", b"")
                large = img.convert("RGB").resize((6000, 4000))
            target = Path(tmp) / f"big{i}.jpg"
            buffer = io.BytesIO()
            large.save(buffer, format="JPEG", quality=90, exif=exif)
            target.write_bytes(buffer.getvalue())
            big.append(target)
        for label, items in ((f"{len(photos)} real photos, own size", photos), ("12 photos at 24 MP", big)):
            steal = StealMeter()
            ms = median_ms(camera_and_time, items, args.repeats)
            print(f"{'camera + capture time, ' + label:<50}{ms:>10.2f}{steal.text():>7}")
            steal = StealMeter()
            ms = median_ms(perceptual_hash, items, args.repeats)
            print(f"{'perceptual hash, ' + label:<50}{ms:>10.2f}{steal.text():>7}")
        shots = synthetic_shots(args.shots)
        steal = StealMeter()
        times = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            groups = group_bursts(shots)
            times.append((time.perf_counter() - begin) * 1000)
        label = f"grouping {args.shots:,} read photos ({len(groups):,} bursts)"
        print(f"{label:<50}{statistics.median(times):>10.1f}{steal.text():>7}")
        steal = StealMeter()
        times = []
        for i in range(args.repeats * 4):
            photo = Path(tmp) / f"mark{i}.jpg"
            shutil.copy2(big[i % len(big)], photo)
            begin = time.perf_counter()
            write_best_of_burst(photo, True)
            times.append((time.perf_counter() - begin) * 1000)
        label = "best-of-burst keyword into a 24 MP JPEG"
        print(f"{label:<50}{statistics.median(times):>10.1f}{steal.text():>7}")


if __name__ == "__main__":
    main()
