"""Scoring speed and memory: decode, preprocess, inference and total seconds per photo.

For generated 1, 6, 12 and 24 MP JPEGs, every variant (fp32, fp16, dynamic-int8) and 1 and 2 threads,
prints median seconds per stage, the token count and the process's max RSS. Each (variant, threads)
pair runs in its own process, photos in increasing size, so max RSS is the peak up to that photo.

The weights are synthetic (official layout, full 27 M-parameter size): speed and memory do not depend
on the weights' values. Converted models are cached in --cache (default: ~/.cache/musiqd-bench).

With --cli N, also runs the real command, ``musiqd score`` over N copies of the largest photo (with
--write: each photo gets its score embedded, and an index records it), and prints seconds per photo and
the command's peak RSS (VmHWM, read from /proc while it runs).

The steal column is the share of CPU time the hypervisor took during the row (on a shared virtual
machine the same run takes up to twice as long when the host is busy): compare rows with little steal.

Targets: default policy, 2 threads, dynamic-int8, 24 MP: total <= 0.3 s median per photo end to end;
peak RSS <= 350 MB for ``musiqd score`` over 100 photos of 24 MP (issue 11).

    python benchmarks/bench_score.py [--repeats 5] [--variants dynamic-int8] [--threads 2] [--cli 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StealMeter, ensure_models, machine, peak_rss_mb

SIZES = {"1MP": (1224, 816), "6MP": (3000, 2000), "12MP": (4240, 2832), "24MP": (6000, 4000)}


def make_photo(path: Path, width: int, height: int) -> None:
    """A photo-like JPEG: smooth light, edges, texture and noise (compresses like a real photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 110 + 60 * np.sin(xx / (width / 7)) * np.cos(yy / (height / 5))
    img = np.repeat(img[..., None], 3, axis=2) + rng.uniform(-40, 40, size=3).astype(np.float32)
    for _ in range(40):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        img[y0 : y0 + height // 8, x0 : x0 + width // 8] += rng.uniform(-50, 50, size=3)
    img += 12 * np.sin(xx / 2.5)[..., None] * np.sin(yy / 3.5)[..., None]
    img += rng.normal(0, 4, size=img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def worker(args: argparse.Namespace) -> None:
    """Runs in a child process: one variant and thread count, every photo size."""
    from musiq_daemon.api import Scorer
    from musiq_daemon.preprocess import ResolutionPolicy

    policy = ResolutionPolicy.parse(args.policy) if args.policy else None
    scorer = Scorer(
        "koniq",
        args.variant,
        device="cpu",
        threads=args.threads,
        policy=policy,
        models_root=Path(args.models),
    )
    rows = []
    for label in args.sizes:
        photo = Path(args.photos) / f"{label}.jpg"
        scorer.score(photo)  # warm-up: allocation for this length, page cache
        runs = [scorer.score(photo) for _ in range(args.repeats)]
        rows.append(
            {
                "size": label,
                "tokens": runs[0].num_tokens,
                **{
                    k: statistics.median(r.timings[k] for r in runs)
                    for k in ("decode", "preprocess", "inference")
                },
                "total": statistics.median(r.duration for r in runs),
                "rss_mb": peak_rss_mb(),
            }
        )
    print(json.dumps(rows))


def cli_run(
    models: Path, photo: Path, count: int, threads: int, write: bool, work: Path
) -> tuple[float, float]:
    """Seconds per photo and peak RSS (MB) of ``musiqd score`` over ``count`` copies of ``photo``."""
    import shutil

    folder = work / f"cli-{'write' if write else 'read'}"
    folder.mkdir()
    for i in range(count):
        shutil.copyfile(photo, folder / f"IMG_{i:04}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
    env |= {"MUSIQD_MODEL_DIR": str(models), "MUSIQD_DATA_DIR": str(work / "data")}
    cmd = [sys.executable, "-m", "musiq_daemon", "score", str(folder), "--device", "cpu", "--threads"]
    cmd += [str(threads), "--db", str(work / f"index-{write}.sqlite3")] + (["--write"] if write else [])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:  # VmHWM is the process's own peak (not the parent's, as ru_maxrss may be)
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        peak = max([peak] + [int(line.split()[1]) / 1024 for line in status.splitlines() if "VmHWM" in line])
        time.sleep(0.05)
    _, stderr = proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"musiqd score failed: {stderr.decode()}")
    return elapsed / count, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "dynamic-int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--policy", default=None, help="resolution policy (default: the model's, max_side=1024)"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    parser.add_argument("--cli", type=int, default=0, metavar="N", help="also run musiqd score on N photos")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return

    models = ensure_models(args.cache, sorted({*args.variants, "dynamic-int8"}))
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.sizes:
            make_photo(Path(tmp) / f"{label}.jpg", *SIZES[label])
        header = (
            f"{'variant':<13}{'thr':>4}{'size':>6}{'tokens':>8}{'decode':>8}{'prep':>8}{'infer':>8}"
            f"{'total':>8}{'maxRSS MB':>11}{'steal':>7}"
        )
        print(f"machine: {machine()}")
        print(f"policy: {args.policy or 'model default (max_side=1024)'}; median of {args.repeats}; seconds")
        print(header)
        print("-" * len(header))
        for variant in args.variants:
            for threads in args.threads:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--variant",
                    variant,
                    "--threads",
                    str(threads),
                    "--models",
                    str(models),
                    "--photos",
                    tmp,
                    "--repeats",
                    str(args.repeats),
                    "--sizes",
                    *args.sizes,
                ]
                if args.policy:
                    cmd += ["--policy", args.policy]
                steal = StealMeter()
                out = subprocess.run(
                    cmd,
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                ).stdout
                for row in json.loads(out.strip().splitlines()[-1]):
                    print(
                        f"{variant:<13}{threads:>4}{row['size']:>6}{row['tokens']:>8}{row['decode']:>8.3f}"
                        f"{row['preprocess']:>8.3f}{row['inference']:>8.3f}{row['total']:>8.3f}"
                        f"{row['rss_mb']:>11.0f}{steal.text():>7}"
                    )
        if args.cli:
            largest = max(args.sizes, key=lambda label: SIZES[label][0] * SIZES[label][1])
            print(f"\nmusiqd score over {args.cli} x {largest} JPEG (default variant, dynamic-int8)")
            print(f"{'command':<28}{'thr':>4}{'s/photo':>9}{'peak RSS MB':>13}{'steal':>7}")
            for threads in args.threads:
                for write in (False, True):
                    with tempfile.TemporaryDirectory() as work:
                        photo = Path(tmp) / f"{largest}.jpg"
                        steal = StealMeter()
                        per_photo, rss = cli_run(models, photo, args.cli, threads, write, Path(work))
                    label = "musiqd score --write" if write else "musiqd score"
                    print(f"{label:<28}{threads:>4}{per_photo:>9.3f}{rss:>13.0f}{steal.text():>7}")


if __name__ == "__main__":
    main()
