"""The scoring library: ``score(image)`` and :class:`Scorer` (no CLI, no daemon needed).

>>> from musiq_daemon import Scorer
>>> scorer = Scorer(model="koniq")                # loads the installed koniq dynamic-int8 model once
>>> record = scorer.score("IMG_0001.JPG")          # a path, a PIL image or an RGB numpy array
>>> record.score, record.raw, record.model_version
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.decode import DecodedImage, decode_image, from_array, from_pil
from musiq_daemon.errors import MusiqError
from musiq_daemon.model.reference import raw_score
from musiq_daemon.model.store import InstalledModel, load_installed
from musiq_daemon.preprocess import PatchSequence, ResolutionPolicy, limit_resolution, make_tokens
from musiq_daemon.records import ScoreFailure, ScoreRecord
from musiq_daemon.runtime import Engine, open_engine

__all__ = ["ImageInput", "Prepared", "ScoreFailure", "ScoreRecord", "Scorer", "score", "score_batch"]

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prepared:
    """One photo decoded and patched, ready for :meth:`Scorer.infer`."""

    path: str | None
    decoded: DecodedImage
    sequence: PatchSequence
    timings: dict[str, float]


class Scorer:
    """A MUSIQ model loaded once and reused for many photos."""

    def __init__(
        self,
        model: str | None = None,
        variant: str | None = None,
        *,
        device: str = "auto",
        threads: int = 2,
        policy: ResolutionPolicy | None = None,
        models_root: Path | None = None,
        max_pixels: int | None = None,
    ) -> None:
        catalogue = load_catalogue()
        self.installed: InstalledModel = load_installed(
            model or catalogue.default_model, variant or catalogue.default_variant, root=models_root
        )
        spec = self.installed.spec
        self.policy = policy or ResolutionPolicy(spec.max_side)
        self.max_pixels = max_pixels
        self.engine: Engine = open_engine(
            self.installed.path, num_outputs=spec.head, device=device, threads=threads
        )

    @property
    def device(self) -> str:
        return self.engine.device

    def _decode(self, image: ImageInput) -> DecodedImage:
        if isinstance(image, Image.Image):
            return from_pil(image)
        if isinstance(image, np.ndarray):
            return from_array(image)
        kwargs: dict[str, Any] = {"min_long_side": self.policy.max_side}
        if self.max_pixels is not None:
            kwargs["max_pixels"] = self.max_pixels
        return decode_image(Path(image), **kwargs)

    def prepare(self, image: ImageInput) -> Prepared:
        """Decode and patch one photo (the CPU work that can overlap the previous photo's inference)."""
        t0 = time.perf_counter()
        decoded = self._decode(image)
        t1 = time.perf_counter()
        sequence = make_tokens(limit_resolution(decoded.pixels, self.policy))
        t2 = time.perf_counter()
        path = str(image) if isinstance(image, (str, Path)) else None
        return Prepared(path, decoded, sequence, {"decode": t1 - t0, "preprocess": t2 - t1})

    def infer(self, prepared: Prepared) -> ScoreRecord:
        t0 = time.perf_counter()
        output = self.engine.run(prepared.sequence.tokens)
        raw = raw_score(output)
        inference = time.perf_counter() - t0
        spec, installed = self.installed.spec, self.installed
        return ScoreRecord(
            score=spec.reported(raw),
            raw=raw,
            model_id=spec.id,
            model_version=installed.version,
            variant=installed.variant,
            model_sha256=installed.tflite_sha256,
            scale_min=spec.scale_min,
            scale_max=spec.scale_max,
            resolution_policy=self.policy.describe(),
            device=self.engine.device,
            num_tokens=prepared.sequence.num_tokens,
            scored_size=prepared.sequence.image_size,
            stored_size=prepared.decoded.stored_size,
            source=prepared.decoded.source,
            format=prepared.decoded.format,
            orientation_applied=prepared.decoded.orientation_applied,
            scored_at=datetime.now().astimezone().isoformat(timespec="seconds"),
            timings={**prepared.timings, "inference": inference},
            path=prepared.path,
        )

    def score(self, image: ImageInput) -> ScoreRecord:
        """Score one photo. Raises :class:`~musiq_daemon.errors.MusiqError` for a bad file."""
        return self.infer(self.prepare(image))

    def score_many(self, images: Iterable[ImageInput]) -> Iterator[ScoreRecord | ScoreFailure]:
        """Score photos in order, decoding the next photo while the current one runs through the model.

        A photo that fails yields a :class:`ScoreFailure` and the batch goes on.
        """

        def prepare(image: ImageInput) -> Prepared | ScoreFailure:
            try:
                return self.prepare(image)
            except MusiqError as exc:
                return ScoreFailure(str(image) if isinstance(image, (str, Path)) else None, exc)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="musiqd-decode") as pool:
            pending: Future[Prepared | ScoreFailure] | None = None
            for image in images:
                following = pool.submit(prepare, image)
                if pending is not None:
                    yield self._finish(pending.result())
                pending = following
            if pending is not None:
                yield self._finish(pending.result())

    def _finish(self, item: Prepared | ScoreFailure) -> ScoreRecord | ScoreFailure:
        if isinstance(item, ScoreFailure):
            return item
        try:
            return self.infer(item)
        except (MusiqError, ValueError) as exc:
            error = exc if isinstance(exc, MusiqError) else MusiqError(f"inference failed: {exc}")
            return ScoreFailure(item.path, error)


_default: dict[tuple[Any, ...], Scorer] = {}


def score(
    image: ImageInput, *, model: str | None = None, variant: str | None = None, device: str = "auto"
) -> ScoreRecord:
    """Score one photo with a model kept loaded between calls (see :class:`Scorer` for options)."""
    key = (model, variant, device)
    if key not in _default:
        _default[key] = Scorer(model, variant, device=device)
    return _default[key].score(image)


def score_batch(
    images: Iterable[ImageInput],
    *,
    model: str | None = None,
    variant: str | None = None,
    device: str = "auto",
) -> list[ScoreRecord | ScoreFailure]:
    """Score many photos with decode/inference overlap; failures are returned, not raised."""
    key = (model, variant, device)
    if key not in _default:
        _default[key] = Scorer(model, variant, device=device)
    return list(_default[key].score_many(images))
