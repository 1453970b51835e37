"""int8 against fp32 on real photos, layer group by layer group: which layers to keep in float.

For each quantization recipe (every quantizable layer in int8; the same with one group of layers kept in
float32; the recipe the converter ships, musiq_daemon.model.convert.KEEP_FLOAT) prints the file size,
the worst and mean difference from fp32 on the reported scale, Spearman's rank correlation with fp32
across the photos and the inference time per photo. fp32 equals the numpy reference within 1e-6.

Photos: --photos (default ~/.cache/musiqd-bench/photos, made by benchmarks/photos.py: 42 real photographs
from Debian and PyPI packages). Weights: --checkpoint for an official checkpoint (koniq_ckpt.npz); without
it, the synthetic full-size koniq weights of the other benchmarks. Scores from synthetic weights mean
nothing, but how much int8 moves them is still measured: the acceptance target (worst <= 0.03 on 1-5,
rank correlation >= 0.995) is checked on them until real weights are at hand. Needs the convert extra.

    python benchmarks/bench_fidelity.py [--photos DIR] [--checkpoint koniq_ckpt.npz] [--threads 2]
                                        [--recipes shipped all-int8 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_models, machine

#: Layer groups by name (regular expressions over the layer names the converter gives).
GROUPS = {
    "root convolution": (r"conv_root/",),
    "stem convolutions": (r"conv_root/", r"block1/unit1/conv"),
    "embedding dense": (r"embedding/",),
    "attention query": (r"block\d+/query/",),
    "attention key+value": (r"block\d+/kv/",),
    "attention output": (r"block\d+/out/",),
    "MLP Dense_0": (r"block\d+/Dense_0/",),
    "MLP Dense_1": (r"block\d+/Dense_1/",),
}


def recipes() -> dict[str, tuple[str, ...]]:
    from musiq_daemon.model.convert import KEEP_FLOAT

    out: dict[str, tuple[str, ...]] = {"all-int8": ()}
    out |= {f"float: {name}": regexes for name, regexes in GROUPS.items()}
    out["shipped (KEEP_FLOAT)"] = KEEP_FLOAT
    return out


def tokens_of(photos: list[Path], max_side: int) -> list[Any]:
    from musiq_daemon.decode import decode_image
    from musiq_daemon.preprocess import ResolutionPolicy, limit_resolution, make_tokens
    from musiq_daemon.runtime import model_rows

    policy = ResolutionPolicy(max_side)
    out = []
    for photo in photos:
        pixels = decode_image(photo, min_long_side=max_side).pixels
        out.append(model_rows(make_tokens(limit_resolution(pixels, policy)).tokens))
    return out


def scores(path: Path, tokens: list[Any], threads: int) -> tuple[list[float], float]:
    from musiq_daemon.model.reference import raw_score
    from musiq_daemon.runtime import open_engine

    engine = open_engine(path, num_outputs=1, device="cpu", threads=threads)
    engine.run(tokens[0])  # allocation and weight packing: not timed
    started = time.perf_counter()
    raw = [raw_score(engine.run(t)) for t in tokens]
    return raw, (time.perf_counter() - started) / len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path.home() / ".cache" / "musiqd-bench" / "photos")
    parser.add_argument("--checkpoint", type=Path, help="an official koniq checkpoint (default: synthetic)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", help="recipe names to run (default: all)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    args = parser.parse_args()

    import numpy as np

    from musiq_daemon.catalogue import load_catalogue
    from musiq_daemon.decode import SUPPORTED_SUFFIXES
    from musiq_daemon.model.convert import quantize_dynamic
    from musiq_daemon.model.store import install_from_checkpoint, model_path
    from musiq_daemon.model.verify import spearman

    photos = sorted(p for p in args.photos.glob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not photos:
        sys.exit(f"no photos in {args.photos}: run python benchmarks/photos.py first")
    if args.checkpoint:
        root = args.cache / "fidelity-models"
        install_from_checkpoint(args.checkpoint, "koniq", ["fp32"], root=root)
    else:
        root = ensure_models(args.cache, ["fp32"])
    fp32 = model_path("koniq", "fp32", root)
    spec = load_catalogue().get("koniq")
    tokens = tokens_of(photos, spec.max_side or 1024)
    reference, fp32_s = scores(fp32, tokens, args.threads)
    ref = np.asarray([spec.reported(r) for r in reference])

    print(f"machine: {machine()}; {args.threads} threads")
    weights = f"checkpoint {args.checkpoint.name}" if args.checkpoint else "synthetic weights"
    print(f"{len(photos)} photos from {args.photos}, {weights}; fp32 spread (std) {ref.std():.3f} on 1-5")
    header = f"{'recipe':<32}{'MB':>7}{'worst |diff|':>14}{'mean |diff|':>13}{'Spearman':>10}{'ms/photo':>10}"
    print(header)
    print("-" * len(header))
    print(
        f"{'fp32':<32}{fp32.stat().st_size / 1e6:>7.1f}{0:>14.4f}{0:>13.4f}{1:>10.4f}{fp32_s * 1000:>10.0f}"
    )
    chosen = recipes()
    for name, keep in chosen.items():
        if args.recipes and not any(r in name for r in args.recipes):
            continue
        quantized = args.cache / "fidelity-models" / "quantized.tflite"
        quantized.parent.mkdir(parents=True, exist_ok=True)
        quantized.write_bytes(quantize_dynamic(fp32.read_bytes(), keep))
        raw, seconds = scores(quantized, tokens, args.threads)
        got = np.asarray([spec.reported(r) for r in raw])
        diff = np.abs(got - ref)
        rho = spearman(list(ref), list(got))
        print(
            f"{name:<32}{quantized.stat().st_size / 1e6:>7.1f}{diff.max():>14.4f}{diff.mean():>13.4f}"
            f"{rho:>10.4f}{seconds * 1000:>10.0f}"
        )


if __name__ == "__main__":
    main()
