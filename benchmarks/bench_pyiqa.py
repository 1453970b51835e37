"""musiqd against pyiqa's fp32 PyTorch MUSIQ: end-to-end seconds per photo, same photos, same threads.

musiqd: ``Scorer('koniq', 'dynamic-int8', device='cpu')`` with the full-size synthetic model from
``common.ensure_models``, timing ``scorer.score(path)`` (decode, preprocess, inference). pyiqa:
``create_metric('musiq', pretrained=False)`` (koniq head, random weights: real ones cannot be downloaded
here; speed and memory do not depend on the weights' values), timing ``metric(path)``, pyiqa's own path:
``imread2tensor`` (PIL, RGB, to_tensor), then the network at its defaults, which patch the photo at FULL
resolution (``max_seq_len_from_original_res=-1``) plus 224 and 384 px scales. Its tokens grow with the
megapixels and its attention memory with their square: a 24 MP photo is a 23,693-token sequence, one 13.5 GB
attention matrix per step. pyiqa runs under an address-space cap (--pyiqa-mem-gb) so that a photo too
large for the machine fails cleanly instead of waking the OOM killer.

Each tool runs in its own child (--threads for both, one untimed warm-up photo first), rounds interleaved
(musiqd, pyiqa, musiqd, ...). Generated photos are copies of one (the work does not depend on content).
pyiqa needs its own venv (torch CPU, pyiqa --no-deps plus what its MUSIQ path imports); where PyPI's
torchvision cannot load beside that torch, a stand-in with torchvision's ``to_tensor`` is used.

    python benchmarks/bench_pyiqa.py --pyiqa-python /tmp/pyiqa-work/venv/bin/python [--count 10]
        [--size 24MP] [--threads 2] [--rounds 3] [--photos DIR] [--pyiqa-max-seq-len N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import SIZES, make_photo
from common import ensure_models, machine, peak_rss_mb


def list_photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def musiqd_worker(args: argparse.Namespace, photos: list[Path]) -> dict[str, Any]:
    from musiq_daemon.api import Scorer

    scorer = Scorer(
        "koniq", "dynamic-int8", device="cpu", threads=args.threads, models_root=Path(args.models)
    )
    first = scorer.score(photos[0])  # warm-up: engine allocation, weight packing, page cache
    times = []
    for photo in photos:
        started = time.perf_counter()
        scorer.score(photo)
        times.append(time.perf_counter() - started)
    h, w = first.scored_size
    return {"times": times, "input": f"{w}x{h} (policy-limited)", "tokens": first.num_tokens}


def stub_torchvision() -> bool:
    """Installs a stand-in for torchvision when it cannot be imported; True if it did. pyiqa's MUSIQ path
    only calls ``to_tensor`` (copied from torchvision for 8-bit PIL images, what ``imread2pil`` returns)."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    else:
        return False
    import numpy as np
    import torch

    def to_tensor(pic: Any) -> torch.Tensor:
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)

    root, utils, transforms, functional = (
        types.ModuleType(f"torchvision{n}") for n in ("", ".utils", ".transforms", ".transforms.functional")
    )
    functional.to_tensor = to_tensor  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    utils.make_grid = None  # type: ignore[attr-defined]
    root.utils, root.transforms = utils, transforms  # type: ignore[attr-defined]
    sys.modules.update({m.__name__: m for m in (root, utils, transforms, functional)})
    return True


def pyiqa_worker(args: argparse.Namespace, photos: list[Path]) -> dict[str, Any]:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (int(args.pyiqa_mem_gb * 2**30),) * 2)
    stubbed = stub_torchvision()
    import pyiqa
    import torch

    torch.set_num_threads(args.threads)
    opts = {} if args.pyiqa_max_seq_len is None else {"max_seq_len_from_original_res": args.pyiqa_max_seq_len}
    metric = pyiqa.create_metric("musiq", pretrained=False, device=torch.device("cpu"), **opts).eval()
    seen: dict[str, Any] = {}
    metric.net.register_forward_pre_hook(
        lambda _m, a: seen.update(size="x".join(map(str, a[0].shape[-1:1:-1])))
    )
    metric.net.transformer_encoder.register_forward_pre_hook(
        lambda _m, a: seen.update(tokens=int(a[3].sum()), seq_len=a[0].shape[1])
    )
    times = []
    try:
        with torch.no_grad():
            metric(str(photos[0]))  # warm-up
            for photo in photos:
                started = time.perf_counter()
                metric(str(photo))
                times.append(time.perf_counter() - started)
    except RuntimeError as exc:  # mostly: attention over a full-resolution photo exceeds --pyiqa-mem-gb
        reason = str(exc).strip().splitlines()[-1].split("] ")[-1][:150]
        raise SystemExit(f"{seen.get('size')}, seq {seen.get('seq_len')} tokens: {reason}") from exc
    cap = "" if args.pyiqa_max_seq_len is None else f", at most {args.pyiqa_max_seq_len} tokens"
    note = (
        f"pyiqa {pyiqa.__version__}, torch {torch.__version__}{', torchvision stand-in' if stubbed else ''}"
    )
    return {"times": times, "input": f"{seen['size']} (full res{cap}) + 224 + 384 px", "note": note, **seen}


def run_child(tool: str, python: str, args: argparse.Namespace, photos: list[Path]) -> dict[str, Any]:
    cmd = [python, __file__, "--worker", tool, "--threads", str(args.threads), "--models", str(args.models)]
    cmd += ["--pyiqa-mem-gb", str(args.pyiqa_mem_gb), "--photos", str(photos[0].parent)]
    if args.pyiqa_max_seq_len is not None:
        cmd += ["--pyiqa-max-seq-len", str(args.pyiqa_max_seq_len)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return dict(json.loads(lines[-1]))


def available_gb() -> float:
    lines = Path("/proc/meminfo").read_text().splitlines()
    return next(int(line.split()[1]) / 2**20 for line in lines if line.startswith("MemAvailable:"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pyiqa-python", help="python of a venv with torch and pyiqa")
    parser.add_argument("--musiqd-python", help="default: the project's .venv, else this python")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--size", choices=sorted(SIZES), default="24MP")
    parser.add_argument("--photos", type=Path, help="score these photos instead of generated ones")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pyiqa-max-seq-len", type=int, help="pyiqa's max_seq_len_from_original_res")
    parser.add_argument("--pyiqa-mem-gb", type=float, default=round(0.85 * available_gb(), 1))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    parser.add_argument("--worker", choices=["musiqd", "pyiqa"], help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (musiqd_worker if args.worker == "musiqd" else pyiqa_worker)(args, list_photos(args.photos))
        print(json.dumps({**result, "rss_mb": peak_rss_mb()}))
        return
    if not args.pyiqa_python:
        parser.error("--pyiqa-python is required")
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    pythons = {"musiqd": args.musiqd_python or str(venv if venv.exists() else sys.executable)}
    pythons["pyiqa"] = args.pyiqa_python
    args.models = ensure_models(args.cache, ["dynamic-int8"])
    with tempfile.TemporaryDirectory(prefix="musiqd-bench-pyiqa-") as tmp:
        folder = Path(tmp)
        if args.photos:
            for src in list_photos(args.photos)[: args.count]:
                (folder / src.name).symlink_to(src.resolve())
        else:
            make_photo(folder / "IMG_0000.jpg", *SIZES[args.size])
            for i in range(1, args.count):
                shutil.copyfile(folder / "IMG_0000.jpg", folder / f"IMG_{i:04}.jpg")
        photos = sorted(folder.iterdir())
        results: dict[str, list[dict[str, Any]]] = {"musiqd": [], "pyiqa": []}
        for r in range(args.rounds):
            for tool in ("musiqd", "pyiqa"):
                if any("error" in done for done in results[tool]):
                    continue  # failed once (memory): it would fail again
                print(f"round {r + 1}/{args.rounds}: {tool} ...", file=sys.stderr, flush=True)
                results[tool].append(run_child(tool, pythons[tool], args, photos))
    print(f"machine: {machine()}")
    print(f"{len(photos)} photos ({args.photos or args.size}), {args.threads} threads, {args.rounds} rounds")
    header = (
        f"{'tool':<8}{'median s':>10}{'min':>8}{'max':>8}{'photos/min':>12}{'peak RSS MB':>13}  input, tokens"
    )
    print(header + "\n" + "-" * len(header))
    medians = {}
    for tool, runs in results.items():
        failed = [run["error"] for run in runs if "error" in run]
        times = [t for run in runs if "error" not in run for t in run["times"]]
        if failed or not times:
            print(f"{tool:<8}  FAILED: {failed[0] if failed else 'no run'}")
            continue
        medians[tool] = statistics.median(times)
        last, rss = runs[-1], max(run["rss_mb"] for run in runs)
        seq = f" (padded seq {last['seq_len']})" if "seq_len" in last else ""
        print(
            f"{tool:<8}{medians[tool]:>10.3f}{min(times):>8.3f}{max(times):>8.3f}{60 / medians[tool]:>12.1f}"
            f"{rss:>13.0f}  {last['input']}, {last['tokens']} tokens{seq} {last.get('note', '')}"
        )
    if len(medians) == 2:
        print(f"pyiqa/musiqd (median s/photo): {medians['pyiqa'] / medians['musiqd']:.1f}x")


if __name__ == "__main__":
    main()
