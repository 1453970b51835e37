"""The model catalogue (``models_tflite/manifest.toml``): which MUSIQ models exist and how to read them."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from musiq_daemon.errors import UsageError

MAPPINGS = ("mos-100", "softmax-mean")


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry."""

    id: str
    title: str
    file: str
    url: str
    head: int
    mapping: str
    scale_min: float
    scale_max: float
    max_side: int | None
    published_srcc: float | None
    stars: tuple[float, float, float, float] | None = None  # default star thresholds (2, 3, 4, 5 stars)

    def reported(self, raw: float) -> float:
        """Map the model's raw output to the reported scale (clamped to it).

        ``mos-100``: MOS on about 0..100 -> 1 + 4 * raw / 100 (1..5). ``softmax-mean``: already 1..10.
        The raw value is always kept as well; clamping only keeps star mappings well defined.
        """
        if not math.isfinite(raw):
            raise ValueError(f"model {self.id} produced a non-finite output ({raw})")
        value = 1.0 + 4.0 * raw / 100.0 if self.mapping == "mos-100" else raw
        return min(self.scale_max, max(self.scale_min, value))


@dataclass(frozen=True)
class Catalogue:
    default_model: str
    default_variant: str
    variants: tuple[str, ...]
    models: dict[str, ModelSpec]

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UsageError(f"unknown model '{model_id}': choose one of {known}") from None

    def check_variant(self, variant: str) -> str:
        if variant not in self.variants:
            raise UsageError(f"unknown variant '{variant}': choose one of {', '.join(self.variants)}")
        return variant


def _manifest_text() -> str:
    # Installed wheels carry a copy inside the package; a source checkout reads the top-level file.
    packaged = resources.files("musiq_daemon").joinpath("data/manifest.toml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "models_tflite" / "manifest.toml").read_text(
        encoding="utf-8"
    )


def _spec(model_id: str, entry: dict[str, Any]) -> ModelSpec:
    mapping = str(entry["mapping"])
    if mapping not in MAPPINGS:
        raise ValueError(f"manifest: model {model_id} has unknown mapping {mapping!r}")
    scale = entry["scale"]
    max_side = entry.get("max_side", "full")
    srcc = entry.get("published_srcc")
    stars = entry.get("stars")
    if stars is not None and len(stars) != 4:
        raise ValueError(f"manifest: model {model_id} needs 4 star thresholds, has {len(stars)}")
    return ModelSpec(
        id=model_id,
        title=str(entry["title"]),
        file=str(entry["file"]),
        url=str(entry["url"]),
        head=int(entry["head"]),
        mapping=mapping,
        scale_min=float(scale[0]),
        scale_max=float(scale[1]),
        max_side=None if max_side == "full" else int(max_side),
        published_srcc=None if srcc is None else float(srcc),
        stars=None if stars is None else (float(stars[0]), float(stars[1]), float(stars[2]), float(stars[3])),
    )


def parse_manifest(text: str) -> Catalogue:
    data = tomllib.loads(text)
    models = {mid: _spec(mid, entry) for mid, entry in data["models"].items()}
    catalogue = Catalogue(
        default_model=str(data["default_model"]),
        default_variant=str(data["default_variant"]),
        variants=tuple(str(v) for v in data["variants"]),
        models=models,
    )
    catalogue.get(catalogue.default_model)
    catalogue.check_variant(catalogue.default_variant)
    return catalogue


@cache
def load_catalogue() -> Catalogue:
    return parse_manifest(_manifest_text())


def default_star_thresholds() -> dict[str, tuple[float, float, float, float]]:
    """Each catalogued model's default star thresholds (models without them get no stars)."""
    return {m.id: m.stars for m in load_catalogue().models.values() if m.stars is not None}
