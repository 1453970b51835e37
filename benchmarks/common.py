"""What the benchmarks share: the synthetic full-size models, the machine's description, peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

#: CPU features that decide which XNNPACK kernels run (x86: AVX2 / AVX-512 / VNNI / AMX; ARM: dot
#: product, i8mm, SVE): figures from machines with different sets are not comparable.
CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def machine() -> str:
    """One line: CPU model, core count and the SIMD features that matter for XNNPACK."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):  # no /proc/cpuinfo: the model from platform, no flags
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return (
        f"{model}, {os.cpu_count()} cores, {platform.machine()}: {' '.join(present) or 'no SIMD flags read'}"
    )


class StealMeter:
    """Share of CPU time the hypervisor took from this machine (``steal`` in /proc/stat) since the last
    reading. On a shared virtual machine the same run can take twice as long when the host is busy: a
    figure measured with, say, 30% steal is not comparable with one measured at 0%, so tables print it."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return 0, 0
        return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])

    def percent(self) -> float | None:
        """Steal since the previous call (or construction), in percent; None where it cannot be read."""
        now = self._read()
        steal, total = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        return 100.0 * steal / total if total > 0 else None

    def text(self) -> str:
        value = self.percent()
        return "n/a" if value is None else f"{value:.0f}%"


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not ru_maxrss: Linux carries that over from the parent
    across fork+exec, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def ensure_models(cache: Path, variants: Iterable[str], models: Iterable[str] = ("koniq",)) -> Path:
    """Full-size synthetic models (official layout and size; speed and memory do not depend on the
    weights' values) converted once into ``cache``; re-converted when the converter's graph changed."""
    from musiq_daemon.model.config import GRAPH_FORMAT, MusiqConfig
    from musiq_daemon.model.convert import describe_quantization
    from musiq_daemon.model.store import install_from_checkpoint, model_path
    from musiq_daemon.model.synthetic import write_synthetic_checkpoint

    root = cache / "models"
    for model in models:
        classes = 10 if model == "ava" else 1

        def current(variant: str, model: str = model) -> bool:
            meta = model_path(model, variant, root).with_suffix(".json")
            try:
                recorded = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            # The converter's graph and quantization recipe, as the model records them.
            wanted = (GRAPH_FORMAT, describe_quantization(variant))
            return (recorded.get("graph_format"), recorded.get("quantization")) == wanted

        missing = [v for v in variants if not current(v)]
        if missing:
            ckpt = write_synthetic_checkpoint(
                cache / f"{model}_ckpt.npz", MusiqConfig(num_classes=classes), seed=0
            )
            print(
                f"converting full-size synthetic {model} to {', '.join(missing)} (once) ...", file=sys.stderr
            )
            install_from_checkpoint(ckpt, model, missing, root=root)
    return root
