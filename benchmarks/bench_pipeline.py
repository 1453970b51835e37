"""What a second model costs end to end: the pipeline with one model against two, and against two separate
one-model passes (what scoring every model on its own costs: two decodes and two writes per photo).

Each run scores fresh copies of --count generated JPEGs (--size, default 12 MP) through
:class:`musiq_daemon.pipeline.Pipeline` as ``musiqd score --write`` does: decode (once), infer with every
model, embed every model's values in one metadata write, record in a fresh SQLite index. Models are the
full-size synthetic koniq and ava (official layout and size; speed does not depend on the weight values),
converted once into --cache. Target (issue 10): two models cost at most 1.9x one model.

    python benchmarks/bench_pipeline.py [--count 20] [--size 12MP] [--threads 2] [--variant dynamic-int8]
                                        [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import SIZES, make_photo
from common import ensure_models

DISTINCT = 4  # distinct generated photos; the others are copies (generating 12 MP noise takes seconds)


def run(models: list[str], passes: int, originals: list[Path], work: Path, args: argparse.Namespace) -> float:
    """Seconds for ``passes`` pipeline runs over fresh copies (each pass with ``len(models)//passes``
    models), start-up (model loading, the first inference) excluded."""
    from musiq_daemon.api import Scorer
    from musiq_daemon.index import open_index
    from musiq_daemon.metadata.writer import WritePolicy
    from musiq_daemon.pipeline import Pipeline

    folder = Path(tempfile.mkdtemp(prefix=f"run-{'-'.join(models)}-{passes}-", dir=work))
    photos = [shutil.copy2(src, folder / f"IMG_{i:04}.jpg") for i, src in enumerate(originals)]
    db = open_index(str(folder / "index.sqlite3"))
    groups = [models] if passes == 1 else [[m] for m in models]
    pipelines = [
        Pipeline(
            {
                m: Scorer(m, args.variant, device="cpu", threads=args.threads, models_root=args.models)
                for m in group
            },
            write_policy=WritePolicy(),
            db=db,
            force=True,
        )
        for group in groups
    ]
    warm = shutil.copy2(originals[0], folder / "warm-up.jpg")
    for pipeline in pipelines:  # engines allocate and pack weights on their first photo: not timed
        list(pipeline.run([Path(warm)]))
    started = time.perf_counter()
    for pipeline in pipelines:
        for outcome in pipeline.run([Path(p) for p in photos]):
            if not outcome.ok:
                raise RuntimeError(f"{outcome.path}: {outcome.error or outcome.write_error}")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--size", choices=sorted(SIZES), default="12MP")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", default="dynamic-int8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "musiqd-bench-cache")
    args = parser.parse_args()
    args.models = ensure_models(args.cache, [args.variant], ("koniq", "ava"))
    with tempfile.TemporaryDirectory(prefix="musiqd-bench-pipeline-") as tmp:
        work = Path(tmp)
        width, height = SIZES[args.size]
        distinct = [work / f"distinct-{i}.jpg" for i in range(min(DISTINCT, args.count))]
        for i, path in enumerate(distinct):
            make_photo(path, width + 8 * i, height)
        originals = [distinct[i % len(distinct)] for i in range(args.count)]
        configs = {
            "one model (koniq)": (["koniq"], 1),
            "two models, one pipeline pass": (["koniq", "ava"], 1),
            "two models, one pass each": (["koniq", "ava"], 2),
        }
        times: dict[str, list[float]] = {label: [] for label in configs}
        for round_ in range(args.rounds):  # interleaved, the order rotated: drift hits every config alike
            labels = list(configs)
            labels = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
            for label in labels:
                models, passes = configs[label]
                times[label].append(run(models, passes, originals, work, args))
    print(
        f"{args.count} photos of {args.size}, {args.variant}, {args.threads} threads, "
        f"embedded writes, SQLite index; median of {args.rounds} interleaved rounds"
    )
    print(f"{'run':<38} {'s/photo':>8} {'photos/min':>11} {'vs one model':>13}")
    one = statistics.median(times["one model (koniq)"])
    for label, values in times.items():
        seconds = statistics.median(values)
        per = seconds / args.count
        print(f"{label:<38} {per:>8.3f} {60 / per:>11.1f} {seconds / one:>12.2f}x")


if __name__ == "__main__":
    main()
