"""The model alone, per variant: load time, file size, peak memory, time per stage and time per op.

Stages are the converted model's two signatures, run as the scorer runs them: ``stem`` on chunks of
64 tokens (runtime.STEM_CHUNK), ``encoder`` on all of a photo's tokens. The default token count, 835, is
what a 24 MP (3:2) photo gives at the default policy (max side 1024) once the preprocessing's padding
rows are dropped. Each variant runs in its own process, so its peak RSS is its own.

The per-op table (``--ops``, needs the convert extra: TensorFlow) converts each part of the graph on its
own with the variant's converter settings (musiq_daemon.model.convert.Graph, the code the model is
built from), times it at the exact shapes and multiplies by how often a photo runs it: per chunk for
the stem's parts, per layer for the encoder's. The parts add up to a little more than the stage times
(each part pays its own delegate call; the last encoder layer computes attention for one query row only).

The weights are synthetic (official layout, full 27 M-parameter size): speed and memory do not depend
on their values. Converted models are cached in --cache (default: ~/.cache/musiqd-bench).

    python benchmarks/bench_model.py [--variants fp32 dynamic-int8] [--threads 2] [--tokens 835]
                                     [--repeats 20] [--ops]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_models, machine, peak_rss_mb


def photo_tokens(n: int) -> Any:
    """``n`` token rows of a photo-like image (real pixels, hash and scale ids; all mask 1)."""
    import numpy as np

    from musiq_daemon.model.verify import sample_photos
    from musiq_daemon.preprocess import ResolutionPolicy, limit_resolution, make_tokens
    from musiq_daemon.runtime import model_rows

    side = 1024
    while True:
        image = sample_photos(1, size=(side * 2 // 3, side))[0]
        rows = model_rows(make_tokens(limit_resolution(image, ResolutionPolicy(side))).tokens)
        if rows.shape[0] >= n:
            return np.ascontiguousarray(rows[:n])
        side += 256


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocation, weight packing
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def stages(args: argparse.Namespace) -> dict[str, float]:
    """Runs in a child process: load the variant, time its stages, report peak RSS."""
    import numpy as np

    from musiq_daemon.model.store import model_path
    from musiq_daemon.runtime import STEM_CHUNK, CpuBackend, Engine, pad_rows

    tokens = photo_tokens(args.tokens)
    path = model_path("koniq", args.variant, Path(args.models))
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    backend = CpuBackend(path, args.threads)
    engine = Engine(path, backend, args.threads)
    engine.run(tokens)  # the first run allocates and packs the weights: part of loading
    load_s = time.perf_counter() - started
    chunk = np.ascontiguousarray(tokens[:STEM_CHUNK])
    n = len(tokens)
    embeddings = np.concatenate(
        [backend.embed(pad_rows(tokens[i : i + STEM_CHUNK], STEM_CHUNK)) for i in range(0, n, STEM_CHUNK)]
    )[:n]
    mask = np.ones(len(tokens), np.float32)
    return {
        "size_mb": path.stat().st_size / 1e6,
        "load_s": load_s,
        "stem_chunk_ms": median_ms(lambda: backend.embed(chunk), args.repeats),
        "chunks": math.ceil(len(tokens) / STEM_CHUNK),
        "encoder_ms": median_ms(lambda: backend.encode(embeddings, mask), args.repeats),
        "total_ms": median_ms(lambda: engine.run(tokens), args.repeats),
        "rss_start_mb": rss_before,
        "rss_mb": peak_rss_mb(),
    }


def parts(tokens: int) -> list[tuple[str, int, list[list[int]], Callable[..., Any]]]:
    """(label, runs per photo, input shapes, part) for each part of the graph."""
    from musiq_daemon.model.config import MusiqConfig
    from musiq_daemon.model.reference import GN_ROOT_EPSILON, GN_UNIT_EPSILON
    from musiq_daemon.runtime import STEM_CHUNK

    c, config = STEM_CHUNK, MusiqConfig()
    t, h, layers = tokens + 1, config.hidden_size, config.num_layers
    chunks = math.ceil(tokens / c)
    unit = "block1/unit1/"

    def unit_convs(g: Any, x: Any) -> Any:
        y = g.conv(
            g.conv(g.conv(x, f"{unit}conv1/kernel", 1), f"{unit}conv2/kernel", 1), f"{unit}conv3/kernel", 1
        )
        return g.conv(x, f"{unit}conv_proj/kernel", 1) + y

    def unit_norms(g: Any, wide: Any, narrow: Any) -> Any:
        return (
            g.group_norm(wide, f"{unit}gn_proj", GN_UNIT_EPSILON)
            + g.group_norm(wide, f"{unit}gn3", GN_UNIT_EPSILON),
            g.group_norm(narrow, f"{unit}gn1", GN_UNIT_EPSILON)
            + g.group_norm(narrow, f"{unit}gn2", GN_UNIT_EPSILON),
        )

    def attention_core(g: Any, q: Any, kv: Any, bias: Any) -> Any:
        keys, values = g.split_heads(kv[:, :h]), g.split_heads(kv[:, h:])
        return g.attend(g.split_heads(q), keys, values, bias)

    def gelu_mlp(g: Any, x: Any) -> Any:
        return g.dense(g.tf.nn.gelu(g.dense(x, "block0/Dense_0"), approximate=True), "block0/Dense_1")

    return [
        ("stem: root conv 7x7/2", chunks, [[c, 32, 32, 3]], lambda g, x: g.conv(x, "conv_root/kernel", 2)),
        (
            "stem: root GroupNorm",
            chunks,
            [[c, 16, 16, 64]],
            lambda g, x: g.group_norm(x, "gn_root", GN_ROOT_EPSILON),
        ),
        (
            "stem: max pool",
            chunks,
            [[c, 16, 16, 64]],
            lambda g, x: g.tf.nn.max_pool2d(x, ksize=3, strides=2, padding="SAME"),
        ),
        ("stem: unit convolutions (4)", chunks, [[c, 8, 8, 64]], unit_convs),
        ("stem: unit GroupNorms (4)", chunks, [[c, 8, 8, 256], [c, 8, 8, 64]], unit_norms),
        ("stem: embedding dense", chunks, [[c, 16384]], lambda g, x: g.dense(x, "embedding")),
        (
            "encoder: LayerNorms (2)",
            layers,
            [[t, h]],
            lambda g, x: (g.layer_norm(x, "block0/LayerNorm_0"), g.layer_norm(x, "block0/LayerNorm_2")),
        ),
        (
            "encoder: query, key, value dense",
            layers,
            [[t, h]],
            lambda g, x: (g.dense(x, "block0/query"), g.dense(x, "block0/kv")),
        ),
        ("encoder: attention (QK^T, softmax, AV)", layers, [[t, h], [t, 2 * h], [1, 1, t]], attention_core),
        ("encoder: attention output dense", layers, [[t, h]], lambda g, x: g.dense(x, "block0/out")),
        ("encoder: MLP (dense, GELU, dense)", layers, [[t, h]], gelu_mlp),
    ]


def ops(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs in a child process: convert and time each part of the graph for one variant."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from musiq_daemon.model.checkpoint import load_checkpoint
    from musiq_daemon.model.convert import convert_part

    ckpt = load_checkpoint(Path(args.models).parent / "koniq_ckpt.npz", num_classes=1, model_id="koniq")

    def named(part: Callable[..., Any]) -> Callable[..., Any]:
        # A part's last layer would give its output tensor the signature's output name, and the int8
        # recipe selects layers by name: a cheap ABS after each output keeps the layer's own name.
        def wrapped(g: Any, *tensors: Any) -> Any:
            out = part(g, *tensors)
            return tuple(g.tf.abs(t) for t in out) if isinstance(out, tuple) else g.tf.abs(out)

        return wrapped

    rng = np.random.default_rng(0)
    rows = []
    for label, per_photo, shapes, part in parts(args.tokens):
        flatbuffer = convert_part(
            ckpt.params, ckpt.config, variant=args.variant, part=named(part), inputs=shapes
        )
        interpreter = Interpreter(model_content=flatbuffer, num_threads=args.threads)
        # In the order of ``shapes``: the part's inputs are named input_0, input_1...
        details = sorted(
            interpreter.get_input_details(), key=lambda d: int(d["name"].rsplit("_", 1)[1].split(":")[0])
        )
        for detail, shape in zip(details, shapes, strict=True):
            interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        for detail, shape in zip(details, shapes, strict=True):
            interpreter.set_tensor(detail["index"], rng.standard_normal(shape).astype(np.float32))
        ms = median_ms(interpreter.invoke, args.repeats)
        rows.append({"part": label, "ms": ms, "runs": per_photo, "per_photo_ms": ms * per_photo})
    return rows


def child(args: argparse.Namespace, variant: str, mode: str) -> Any:
    cmd = [sys.executable, __file__, f"--{mode}", "--variant", variant, "--models", str(args.models)]
    cmd += ["--threads", str(args.threads[0]), "--tokens", str(args.tokens), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "dynamic-int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--tokens", type=int, default=835)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ops", action="store_true", help="also the per-op table (needs TensorFlow)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "musiqd-bench")
    parser.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stages or args.parts:
        args.threads = args.threads[0]
        print(json.dumps(stages(args) if args.stages else ops(args)))
        return

    args.models = ensure_models(args.cache, args.variants)
    print(f"machine: {machine()}")
    print(f"{args.tokens} tokens, median of {args.repeats}; milliseconds unless marked")
    for threads in args.threads:
        args.threads = [threads]
        header = (
            f"{'variant':<13}{'thr':>4}{'MB':>7}{'load s':>8}{'stem/chunk':>11}{'stem':>8}{'encoder':>9}"
            f"{'total':>8}{'peak RSS MB':>13}"
        )
        print(header)
        print("-" * len(header))
        for variant in args.variants:
            r = child(args, variant, "stages")
            print(
                f"{variant:<13}{threads:>4}{r['size_mb']:>7.1f}{r['load_s']:>8.2f}{r['stem_chunk_ms']:>11.1f}"
                f"{r['stem_chunk_ms'] * r['chunks']:>8.1f}{r['encoder_ms']:>9.1f}{r['total_ms']:>8.1f}"
                f"{r['rss_mb']:>13.0f}"
            )
    if args.ops:
        threads = args.threads[0]
        table = {variant: child(args, variant, "parts") for variant in args.variants}
        print(f"\nper op, {threads} threads: ms per photo ({args.tokens} tokens; runs per photo in brackets)")
        header = f"{'part':<42}" + "".join(f"{v:>14}" for v in args.variants)
        print(header)
        print("-" * len(header))
        for i, row in enumerate(table[args.variants[0]]):
            cells = "".join(f"{table[v][i]['per_photo_ms']:>14.1f}" for v in args.variants)
            print(f"{row['part'] + ' [' + str(row['runs']) + ']':<42}{cells}")
        totals = "".join(f"{sum(r['per_photo_ms'] for r in table[v]):>14.1f}" for v in args.variants)
        print(f"{'sum of parts':<42}{totals}")


if __name__ == "__main__":
    main()
