"""``musiqd models verify``: installed TFLite models against the numpy reference forward pass.

The reference (``musiq_daemon.model.reference``) runs the source checkpoint's float32 weights through
the full architecture in numpy; each installed variant runs the same token sequences through LiteRT on
the CPU. Reported per variant, on the scale users see (1-5 for the MOS models, 1-10 for AVA): the worst
and the mean difference of the score, the largest relative difference of the raw model output, and the
rank correlation of the scores across the photos (what matters for sorting a library). A variant passes
when its worst difference stays within :data:`TOLERANCE` of the scale's range: for dynamic-int8, 0.03 on
the 1-5 scale, well under the 0.4 between two star thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from musiq_daemon.decode import decode_image
from musiq_daemon.errors import UsageError
from musiq_daemon.model.checkpoint import load_checkpoint
from musiq_daemon.model.reference import forward, raw_score
from musiq_daemon.model.store import InstalledModel
from musiq_daemon.paths import checkpoints_dir
from musiq_daemon.preprocess import PatchSequence, ResolutionPolicy, limit_resolution, make_tokens
from musiq_daemon.runtime import open_engine

#: Largest difference of the reported score accepted per variant, as a fraction of the scale's range
#: (0.03 on 1-5 is 0.0075 of its range of 4). See models_tflite/README.md for the measurements.
TOLERANCE = {"fp32": 5e-5, "fp16": 2.5e-3, "dynamic-int8": 7.5e-3}


@dataclass(frozen=True)
class VariantReport:
    variant: str
    max_abs_diff: float  # raw model output
    max_rel_diff: float  # raw model output
    max_reported_diff: float  # on the reported scale
    mean_reported_diff: float
    spearman: float
    tolerance: float  # on the reported scale
    ok: bool


@dataclass(frozen=True)
class VerifyReport:
    num_images: int
    reference: list[float]
    rows: list[VariantReport]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: Sequence[float]) -> npt.NDArray[np.float64]:
        x = np.asarray(values, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # average the ranks of ties
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def sample_photos(
    count: int = 8, size: tuple[int, int] = (384, 512), seed: int = 0
) -> list[npt.NDArray[np.uint8]]:
    """Photo-like images (smooth light, textured regions, edges, noise, some blur) of varied quality."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for i in range(count):
        base = rng.uniform(40, 200, size=3).astype(np.float32)
        light = 60 * np.sin(xx / rng.uniform(40, 200) + i) * np.cos(yy / rng.uniform(40, 200))
        img = base[None, None, :] + light[..., None]
        # Rectangles with sharp edges, and a textured band.
        for _ in range(6):
            y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            img[y0 : y0 + int(rng.integers(20, h // 2)), x0 : x0 + int(rng.integers(20, w // 2))] = (
                rng.uniform(0, 255, size=3)
            )
        img += (rng.standard_normal((h, w, 1)) * 20 * np.sin(xx / 3)[..., None]) * (i % 2)
        img += rng.standard_normal((h, w, 3)) * (2 + 6 * (i % 4))  # noise from clean to noisy
        if i % 3 == 2:  # defocus-like blur on some images
            k = 2 + i % 5
            img = np.cumsum(np.cumsum(img, axis=0), axis=1)
            img = (img[k:, k:] - img[:-k, k:] - img[k:, :-k] + img[:-k, :-k]) / (k * k)
            img = np.pad(img, ((k, 0), (k, 0), (0, 0)), mode="edge")
        images.append(np.clip(img, 0, 255).round().astype(np.uint8))
    return images


def _checkpoint_for(model: InstalledModel, explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"checkpoint {explicit} does not exist: pass the path of {model.spec.file}")
        return explicit
    candidates: list[Path] = []
    recorded = model.metadata.get("checkpoint_path")
    if recorded:
        candidates.append(Path(str(recorded)))
    candidates.append(checkpoints_dir() / model.spec.file)
    for path in candidates:
        if path.is_file():
            return path
    raise UsageError(
        f"the source checkpoint of {model.spec.id} ({model.spec.file}) is not available: "
        "pass --checkpoint PATH"
    )


def verify_model(
    models: Sequence[InstalledModel], images: Sequence[Path], *, checkpoint: Path | None = None
) -> VerifyReport:
    """Run the reference and every variant in ``models`` (one model id) on the same token sequences."""
    if not models:
        raise UsageError("no installed variant to verify")
    spec = models[0].spec
    ckpt = load_checkpoint(_checkpoint_for(models[0], checkpoint), num_classes=spec.head, model_id=spec.id)
    for m in models:
        if m.checkpoint_sha256 != ckpt.sha256:
            raise UsageError(
                f"{m.path.name} of {spec.id} was converted from another checkpoint (sha256 "
                f"{m.checkpoint_sha256[:12]}, given {ckpt.sha256[:12]}): pass the right --checkpoint"
            )
    policy = ResolutionPolicy(spec.max_side)
    pixels = [decode_image(p, min_long_side=policy.max_side).pixels for p in images] or sample_photos()
    sequences: list[PatchSequence] = [make_tokens(limit_resolution(px, policy)) for px in pixels]
    reference = [raw_score(forward(ckpt.params, ckpt.config, s.tokens)) for s in sequences]
    ref = np.asarray(reference)
    reported_ref = np.asarray([spec.reported(r) for r in reference])
    rows = []
    for m in models:
        engine = open_engine(m.path, num_outputs=spec.head, device="cpu")
        got = np.asarray([raw_score(engine.run(s.tokens)) for s in sequences])
        diff = np.abs(got - ref)
        rel = diff / np.maximum(np.abs(ref), 1e-6)
        reported = np.abs(np.asarray([spec.reported(float(g)) for g in got]) - reported_ref)
        tolerance = TOLERANCE.get(m.variant, 0.0) * (spec.scale_max - spec.scale_min)
        rows.append(
            VariantReport(
                variant=m.variant,
                max_abs_diff=float(diff.max()),
                max_rel_diff=float(rel.max()),
                max_reported_diff=float(reported.max()),
                mean_reported_diff=float(reported.mean()),
                spearman=spearman(list(ref), list(got)),
                tolerance=tolerance,
                ok=bool(reported.max() <= tolerance),
            )
        )
    return VerifyReport(len(sequences), reference, rows)
