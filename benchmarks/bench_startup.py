"""Start-up time of the commands that score nothing: median wall time of the real `musiqd` over N runs.

`musiqd --help`, `musiqd query --min 4` (on an up-to-date index of --photos scored photos, built first
through the index API), `musiqd status` and `musiqd config show`, in an isolated environment (a data folder
of its own, no configuration file, no MUSIQD_* variables). The commands run in interleaved rounds, so that a
burst of load on the machine slows every command a little rather than one a lot. Two reference rows show the
floor under them: Python's own start-up, and importing SQLAlchemy (which `status` and `stats` pay; `query`
reads an up-to-date SQLite index with the standard library). Target (start-up task): `--help` and `query
--min 4` <= 0.2 s wall time. The CPU column (median user + system seconds of the process) is steadier than
wall time on a machine that is busy with something else.

Byte code: an installed musiqd has compiled byte code. A source checkout run with PYTHONDONTWRITEBYTECODE
compiles every module on every start, so by default the runs use byte code cached in the benchmark's
temporary folder (one warm-up run per command writes it); --as-is keeps the environment's behaviour.

    python benchmarks/bench_startup.py [--runs 15] [--photos 1000] [--as-is]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from musiq_daemon.index import open_index
from musiq_daemon.index.records import record_score, upsert_photo
from musiq_daemon.records import ScoreRecord

COMMANDS: list[tuple[str, list[str]]] = [
    ("musiqd --help", ["--help"]),
    ("musiqd query --min 4", ["query", "--min", "4"]),
    ("musiqd status", ["status"]),
    ("musiqd config show", ["config", "show"]),
]
REFERENCES: list[tuple[str, list[str]]] = [
    ("(python start-up alone)", ["-c", "pass"]),
    ("(python -c 'import sqlalchemy.orm')", ["-c", "import sqlalchemy.orm"]),
]
TARGETS = {"musiqd --help": 0.2, "musiqd query --min 4": 0.2}


def build_index(db_path: Path, photos_dir: Path, n: int) -> None:
    """``n`` photos (small files, never decoded) with a koniq score each, through the index API."""
    rng = random.Random(0)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    scored_at = datetime.now(UTC).isoformat()
    db = open_index(str(db_path))
    try:
        with db.session() as session:
            for i in range(n):
                folder = photos_dir / f"{2015 + i % 10}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"IMG_{i:05d}.JPG"
                path.write_bytes(b"photo %d" % i)
                score = min(5.0, max(1.0, rng.gauss(3.3, 0.55)))
                photo = upsert_photo(
                    session, path, roots=[photos_dir], fmt="JPEG", size_hw=(4000, 6000),
                    taken_at=base + timedelta(hours=i),
                )  # fmt: skip
                record = ScoreRecord(
                    score=score, raw=(score - 1) * 25, model_id="koniq", model_version="abcdef012345",
                    variant="dynamic-int8", model_sha256="0" * 64, scale_min=1.0, scale_max=5.0,
                    resolution_policy="max_side=1024", device="cpu", num_tokens=897,
                    scored_size=(683, 1024), stored_size=(6000, 4000), source="full", format="JPEG",
                    orientation_applied=True, scored_at=scored_at, timings={"inference": 0.4},
                )  # fmt: skip
                record_score(session, photo, record)
    finally:
        db.close()


def musiqd() -> list[str]:
    """The installed console script next to this Python, else ``python -m musiq_daemon``."""
    script = Path(sys.executable).parent / "musiqd"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "musiq_daemon"]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (after one warm-up)")
    parser.add_argument("--photos", type=int, default=1000, help="photos in the index `query` reads")
    parser.add_argument("--as-is", action="store_true", help="keep the environment's byte-code setting")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="musiqd-bench-startup-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
        env.update(MUSIQD_DATA_DIR=str(work / "data"), XDG_CONFIG_HOME=str(work / "no-config"), COLUMNS="120")
        if not args.as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        t0 = time.perf_counter()
        build_index(work / "data" / "index.sqlite3", work / "photos", args.photos)
        built = time.perf_counter() - t0

        cli = musiqd()
        rows = [(label, cli + argv) for label, argv in COMMANDS]
        rows += [(label, [sys.executable, *argv]) for label, argv in REFERENCES]
        for _, argv in rows:  # warm-up: byte code written, files in the page cache
            run_once(argv, env)
        times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in rows}
        for _ in range(args.runs):
            for label, argv in rows:
                times[label].append(run_once(argv, env))

        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(f"machine: {machine()}; load average {load[0]:.2f}")
        print(f"Python {platform.python_version()}; musiqd command: {' '.join(cli)}")
        cache = "as the environment says" if args.as_is else "cached (warm)"
        print(
            f"byte code: {cache}; index: {args.photos} photos (built in {built:.1f} s); {args.runs} runs each"
        )
        print()
        print(f"{'command':<38}{'median s':>10}{'min s':>8}{'max s':>8}{'CPU s':>8}{'target s':>10}")
        for label, _ in rows:
            wall = [w for w, _ in times[label]]
            cpu = statistics.median(c for _, c in times[label])
            target = f"{TARGETS[label]:.2f}" if label in TARGETS else "-"
            med = statistics.median(wall)
            print(f"{label:<38}{med:>10.3f}{min(wall):>8.3f}{max(wall):>8.3f}{cpu:>8.3f}{target:>10}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
