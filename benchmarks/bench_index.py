"""Index speed on a large library: build an index of N photos with scores, time the user's queries.

Prints the time of `query --min 4 --limit 100`, a full `--format paths` export and `stats`, each
measured in-process through the library (median of --repeats) and as the real `musiqd` command (wall
time, Python start-up included). Target (issue 4): `query --min 4 --limit 100` <= 0.2 s.

    python benchmarks/bench_index.py [--photos 1000000] [--db /tmp/musiqd-bench-index.sqlite3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from musiq_daemon.index import ScoreQuery, iter_paths, open_index, run_query, stats
from musiq_daemon.index.models import Photo, Score


def build(db_path: Path, n: int) -> None:
    db = open_index(str(db_path))
    rng = np.random.default_rng(0)
    scores = np.clip(rng.normal(3.3, 0.55, size=n), 1.0, 5.0)
    now = datetime.now(UTC)
    chunk = 50_000
    with db.engine.begin() as conn:
        for start in range(0, n, chunk):
            ids = range(start + 1, min(n, start + chunk) + 1)
            conn.execute(
                insert(Photo),
                [
                    {
                        "id": i,
                        "root": "/volume1/photo",
                        "rel_path": f"{2000 + i % 25}/{i // 1000:04d}/IMG_{i:07d}.JPG",
                        "content_hash": f"jpeg-scan:sha256:{i:064x}",
                        "size": 8_000_000 + i,
                        "mtime_ns": i * 10**9,
                        "inode": i,
                        "format": "JPEG",
                        "width": 6000,
                        "height": 4000,
                        "taken_at": now - timedelta(minutes=i),
                        "first_seen": now,
                        "last_seen": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(Score),
                [
                    {
                        "photo_id": i,
                        "model_id": "koniq",
                        "model_version": "abcdef012345",
                        "variant": "dynamic-int8",
                        "is_latest": True,
                        "score": float(scores[i - 1]),
                        "raw": float(scores[i - 1] - 1) * 25,
                        "scale_min": 1.0,
                        "scale_max": 5.0,
                        "resolution_policy": "max_side=1024",
                        "device": "cpu",
                        "num_tokens": 897,
                        "duration_s": 0.4,
                        "scored_at": now,
                    }
                    for i in ids
                ],
            )
    db.close()


def timed(fn: object, repeats: int) -> float:
    assert callable(fn)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/musiqd-bench-index.sqlite3"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if args.rebuild or not args.db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        t0 = time.perf_counter()
        build(args.db, args.photos)
        print(f"built an index of {args.photos:,} photos in {time.perf_counter() - t0:.1f} s ({args.db})")
    db = open_index(str(args.db))
    top = ScoreQuery(model="koniq", min_score=4, limit=100)
    everything = ScoreQuery(model="koniq", sort="path")
    rows = [
        ("query --min 4 --limit 100", lambda: list(run_query(db, top)),
         ["query", "--min", "4", "--limit", "100"]),
        ("query --format paths (all)", lambda: sum(1 for _ in iter_paths(db, everything)),
         ["query", "--format", "paths", "--sort", "path"]),
        ("stats", lambda: stats(db), ["stats"]),
    ]  # fmt: skip
    cli = [sys.executable, "-m", "musiq_daemon"]
    env = {**os.environ, "COLUMNS": "120"}
    print(f"{'operation':<30}{'library s':>12}{'musiqd s':>12}")
    for label, fn, argv in rows:
        lib = timed(fn, args.repeats)
        t0 = time.perf_counter()
        subprocess.run([*cli, *argv, "--db", str(args.db)], check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t0
        print(f"{label:<30}{lib:>12.3f}{wall:>12.3f}")
    db.close()


if __name__ == "__main__":
    main()
