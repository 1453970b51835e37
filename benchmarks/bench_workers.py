"""Scaling out: throughput of several `musiqd worker` processes on one queue, and the cost of a claim.

Part 1. N generated photos are queued in a fresh index (the daemon's queue, as its scan would fill it);
then K real `musiqd worker` processes with T inference threads each score them (index-only writes, the
default dynamic-int8 model, full-size synthetic weights) and the table prints photos per minute from the
moment every worker has registered to the last job done. Rows: 1, 2 and 4 processes of 1 thread against
one process with 2 and 4 threads; one row per index backend given (SQLite always, PostgreSQL with --pg).

Part 2. The queue alone: M jobs claimed and completed one by one (a claim with its lease, a completion),
milliseconds per job, on each backend: what the queue costs a worker per photo.

    python benchmarks/bench_workers.py [--photos 48] [--size 6MP] [--jobs 1000] [--pg postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import SIZES, make_photo
from common import StealMeter, ensure_models, machine

from musiq_daemon.daemon import queue
from musiq_daemon.index.db import open_index
from musiq_daemon.index.records import upsert_photo

ROWS = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4)]  # (processes, threads each)


def reset(url: str | None, folder: Path) -> str:
    """A fresh, empty index: a new SQLite file, or the PostgreSQL database emptied."""
    if url is None:
        return str(folder / f"index-{time.monotonic_ns()}.sqlite3")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def queue_photos(url: str, photos: list[Path], root: Path) -> None:
    db = open_index(url)
    with db.session() as session:
        for path in photos:
            photo = upsert_photo(session, path, roots=[root])
            queue.enqueue(session, photo.id, "koniq")
    db.close()


def counts(url: str) -> tuple[int, int]:
    """(jobs done, worker processes registered)."""
    from sqlalchemy import func, select

    from musiq_daemon.index.models import Job, WorkerRow

    db = open_index(url)
    with db.session() as s:
        done = s.scalar(select(func.count()).select_from(Job).where(Job.state == "done")) or 0
        workers = s.scalar(select(func.count()).select_from(WorkerRow)) or 0
    db.close()
    return done, workers


def run_row(
    url: str, photos: list[Path], root: Path, processes: int, threads: int, env: dict[str, str]
) -> float:
    """Photos per minute of ``processes`` workers with ``threads`` threads each."""
    queue_photos(url, photos, root)
    command = [sys.executable, "-m", "musiq_daemon", "worker", "--db", url, "--device", "cpu", "--threads",
               str(threads), "--workers", "1", "--write-mode", "index-only"]  # fmt: skip
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        while counts(url)[1] < processes:  # every model loaded, every worker registered
            time.sleep(0.05)
        started = time.perf_counter()
        while counts(url)[0] < len(photos):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker exited early")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return len(photos) / elapsed * 60


def claim_cost(url: str, jobs: int, folder: Path) -> float:
    """Milliseconds per job to claim (with a lease) and complete ``jobs`` queued jobs one by one."""
    root = folder / "claims"
    root.mkdir(exist_ok=True)
    files = []
    for i in range(jobs):
        path = root / f"{i:06d}.jpg"
        path.write_bytes(b"x")
        files.append(path)
    queue_photos(url, files, root)
    db = open_index(url)
    owner = queue.owner_id()
    started = time.perf_counter()
    done = 0
    while (job := queue.claim(db, owner=owner)) is not None:
        queue.complete(db, job.job_id)
        done += 1
    elapsed = time.perf_counter() - started
    db.close()
    shutil.rmtree(root)
    assert done == jobs, (done, jobs)
    return elapsed / jobs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--size", default="6MP", choices=list(SIZES))
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pg", help="a PostgreSQL URL whose database may be emptied (else SQLite only)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    args = parser.parse_args()

    models = ensure_models(args.cache, ["dynamic-int8"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
    backends: list[tuple[str, str | None]] = [("sqlite", None)] + (
        [("postgresql", args.pg)] if args.pg else []
    )
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env |= {"MUSIQD_MODEL_DIR": str(models), "MUSIQD_DATA_DIR": str(work / "data")}
        source = work / "source.jpg"
        make_photo(source, *SIZES[args.size])
        print(f"{args.photos} x {args.size} JPEG, dynamic-int8, index-only; photos/min, registered to done")
        print(f"{'backend':<11}{'processes':>10}{'threads':>9}{'photos/min':>12}{'steal':>7}")
        for name, url in backends:
            for processes, threads in ROWS:
                root = work / f"photos-{name}-{processes}-{threads}"
                root.mkdir()
                photos = []
                for i in range(args.photos):
                    path = root / f"IMG_{i:04d}.jpg"
                    shutil.copyfile(source, path)
                    photos.append(path)
                steal = StealMeter()
                rate = run_row(reset(url, work), photos, root, processes, threads, env)
                print(f"{name:<11}{processes:>10}{threads:>9}{rate:>12.1f}{steal.text():>7}")
                shutil.rmtree(root)
        print(f"\nclaim + complete, one job at a time, {args.jobs} jobs")
        print(f"{'backend':<11}{'ms/job':>8}")
        for name, url in backends:
            runs = [claim_cost(reset(url, work), args.jobs, work) for _ in range(3)]
            print(f"{name:<11}{statistics.median(runs):>8.2f}")


if __name__ == "__main__":
    main()
