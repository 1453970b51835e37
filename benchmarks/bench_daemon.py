"""The daemon's cost: backfill throughput against bare inference, and idle CPU on a big polled root.

1. Backfill: --count generated JPEGs (--size, default 12 MP), scored first by bare ``Scorer.score_many``
   (decode overlapped with inference, no index, no writes), then by ``musiqd watch`` end to end (scan,
   queue, decode, infer, write the score into each photo, record everything). Reports photos per minute
   for both and the daemon's overhead, measured from the end of its initial scan (start-up, i.e. loading
   the model, is reported separately), and the daemon's peak resident memory. Targets: overhead <= 10%
   (issue 5), peak memory <= 350 MB for the default variant (issue 11).
2. Idle: --idle-files small photos under a root watched with observer = poll, the library fully scored (the
   backfill's jobs are marked done directly, as after a finished backfill), then the daemon's CPU time
   (utime + stime from /proc/<pid>/stat) over --idle-seconds, after the initial scan. By default the
   shipped poll interval (300 s) and a window of the same length, which holds exactly one poll. Target:
   <= 1% of one core.

The model is the full-size synthetic koniq (official layout and size; speed does not depend on the weight
values), converted once into --cache like benchmarks/bench_score.py does.

    python benchmarks/bench_daemon.py [--count 1000] [--size 12MP] [--idle-files 50000] [--threads 2]
                                      [--skip-idle]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import SIZES, make_photo
from common import ensure_models

DISTINCT = 8  # distinct generated photos; the others are copies (generating 12 MP noise takes seconds)


def write_config(path: Path, root: Path, db: Path, args: argparse.Namespace, **extra: object) -> Path:
    # No nice/ionice: the bare run has none either.
    values = {
        "roots": [str(root)], "database": str(db), "variant": args.variant, "threads": args.threads,
        "nice": 0, "ioclass": "none", **extra,
    }  # fmt: skip
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    lines += ["[write]", f"mode = {json.dumps(args.write_mode)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def daemon_env(models: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSIQD_", "NOTIFY_", "WATCHDOG_"))}
    return env | {"MUSIQD_MODEL_DIR": str(models), "MUSIQD_DATA_DIR": str(data)}


def start_daemon(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "musiq_daemon", "watch", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=out, env=env,
        )  # fmt: skip


def wait_for_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 3600) -> float:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            sys.exit(f"the daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {text!r}")
        time.sleep(0.1)
    return time.monotonic()


def jobs_done(db: Path) -> tuple[int, int]:
    """(done, failed) jobs; read-only, as `musiqd status` would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        counts = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    return counts.get("done", 0), counts.get("failed", 0)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), what systemd's MemoryMax= has to allow."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def backfill(args: argparse.Namespace, work: Path, models: Path) -> dict[str, float]:
    root = work / "photos"
    root.mkdir()
    width, height = SIZES[args.size]
    print(f"generating {args.count} {args.size} JPEGs ({DISTINCT} distinct) ...", file=sys.stderr)
    bases = []
    for i in range(min(DISTINCT, args.count)):
        base = work / f"base-{i}.jpg"
        make_photo(base, width + 8 * i, height)  # distinct sizes: distinct photos
        bases.append(base)
    paths = [root / f"{i // 100:02d}" / f"IMG_{i:05d}.jpg" for i in range(args.count)]
    for i, path in enumerate(paths):
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(bases[i % len(bases)], path)

    from musiq_daemon.api import ScoreFailure, Scorer

    scorer = Scorer("koniq", args.variant, device="cpu", threads=args.threads, models_root=models)
    scorer.score(bases[0])  # warm-up
    started = time.monotonic()
    failures = sum(isinstance(r, ScoreFailure) for r in scorer.score_many(paths))
    bare_s = time.monotonic() - started
    if failures:
        sys.exit(f"{failures} photos failed in the bare run")
    del scorer

    db = work / "index.sqlite3"
    config = write_config(work / "backfill.toml", root, db, args)
    log = work / "backfill.log"
    launched = time.monotonic()
    proc = start_daemon(config, daemon_env(models, work / "data"), log)
    try:
        ready = wait_for_log(log, "initial scan done", proc)
        while (counts := jobs_done(db))[0] + counts[1] < args.count:
            if proc.poll() is not None:
                sys.exit(f"the daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        finished = time.monotonic()
        peak_mb = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    if counts[1]:
        sys.exit(f"{counts[1]} photos failed in the daemon run (see {log})")
    daemon_s = finished - ready
    return {
        "count": args.count,
        "bare_per_min": args.count / bare_s * 60,
        "daemon_per_min": args.count / daemon_s * 60,
        "daemon_startup_s": ready - launched,
        "daemon_end_to_end_per_min": args.count / (finished - launched) * 60,
        "overhead_pct": (daemon_s / bare_s - 1) * 100,
        "daemon_peak_rss_mb": peak_mb,
    }


def idle(args: argparse.Namespace, work: Path, models: Path) -> dict[str, float]:
    root = work / "library"
    sample = work / "sample.jpg"
    make_photo(sample, 160, 120)
    data = sample.read_bytes()
    print(f"writing {args.idle_files} files ...", file=sys.stderr)
    for i in range(args.idle_files):
        folder = root / f"{i // 500:03d}"
        if i % 500 == 0:
            folder.mkdir(parents=True)
        photo = folder / f"IMG_{i:06d}.jpg"
        photo.write_bytes(data)
        os.utime(photo, (time.time() - 86400,) * 2)  # a library, not a copy in progress
    db = work / "idle.sqlite3"
    config = write_config(
        work / "idle.toml", root, db, args, observer="poll", poll_interval=args.poll_interval
    )
    env = daemon_env(models, work / "idle-data")
    # Paused from the start: the initial scan queues every file; the jobs are then marked done as a finished
    # backfill leaves them, and scoring resumes with nothing to do.
    musiqd = [sys.executable, "-m", "musiq_daemon"]
    subprocess.run([*musiqd, "pause", "--config", str(config)], env=env, check=True, capture_output=True)
    log = work / "idle.log"
    proc = start_daemon(config, env, log)
    try:
        wait_for_log(log, "initial scan done", proc)
        with sqlite3.connect(db, timeout=60) as conn:
            queued = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            if queued != args.idle_files:
                sys.exit(f"the initial scan queued {queued} photos, not {args.idle_files}")
            conn.execute("UPDATE jobs SET state = 'done'")
        subprocess.run([*musiqd, "resume", "--config", str(config)], env=env, check=True, capture_output=True)
        time.sleep(5)  # the resume is seen, the first poll's snapshot taken
        before, started = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - started
    finally:
        stop(proc)
    return {
        "files": args.idle_files,
        "poll_interval_s": args.poll_interval,
        "window_s": elapsed,
        "cpu_s": used,
        "cpu_pct_of_one_core": used / elapsed * 100,
    }


def print_table(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    rows = []
    if "backfill" in results:
        b = results["backfill"]
        setup = (
            f"{b['count']:.0f} x {args.size} JPEG, {args.variant}, {args.threads} threads, "
            f"write {args.write_mode}"
        )
        rows += [
            ("backfill: bare Scorer.score_many", setup, f"{b['bare_per_min']:.1f} photos/min", ""),
            ("backfill: musiqd watch, after its initial scan", setup, f"{b['daemon_per_min']:.1f} photos/min",
             ""),
            ("backfill: musiqd watch, start-up included", setup,
             f"{b['daemon_end_to_end_per_min']:.1f} photos/min", f"start-up {b['daemon_startup_s']:.1f} s"),
            ("daemon overhead", "", f"{b['overhead_pct']:+.1f}%", "<= 10%"),
            ("daemon peak memory (VmHWM)", setup, f"{b['daemon_peak_rss_mb']:.0f} MB", "<= 350 MB"),
        ]  # fmt: skip
    if "idle" in results:
        i = results["idle"]
        rows.append((
            "idle CPU, polled root", f"{i['files']:.0f} files, poll every {i['poll_interval_s']:g} s, "
            f"{i['window_s']:.0f} s window ({i['cpu_s']:.2f} s CPU)",
            f"{i['cpu_pct_of_one_core']:.2f}% of one core", "<= 1%",
        ))  # fmt: skip
    header = ("measure", "setup", "result", "target")
    widths = [max(len(str(row[n])) for row in [header, *rows]) for n in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="photos in the backfill")
    parser.add_argument("--size", choices=sorted(SIZES), default="12MP", help="their size")
    parser.add_argument("--idle-files", type=int, default=50_000)
    parser.add_argument("--idle-seconds", type=float, default=300.0)
    parser.add_argument("--poll-interval", type=float, default=300.0, help="the shipped default")
    parser.add_argument("--variant", default="dynamic-int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-mode", default="embed", choices=["embed", "sidecar", "index-only"])
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed")
    args = parser.parse_args()
    models = ensure_models(args.cache, [args.variant])
    work = Path(tempfile.mkdtemp(prefix="musiqd-bench-", dir=args.workdir))
    results: dict[str, dict[str, float]] = {}
    try:
        if not args.skip_backfill:
            results["backfill"] = backfill(args, work, models)
        if not args.skip_idle:
            results["idle"] = idle(args, work, models)
        print_table(args, results)
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
