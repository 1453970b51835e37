"""The scoring library: ``score(image)`` and :class:`Scorer` (no CLI, no daemon needed).

>>> from musiq_daemon import Scorer
>>> scorer = Scorer(model="koniq")                # loads the installed koniq dynamic-int8 model once
>>> record = scorer.score("IMG_0001.JPG")          # a path, a PIL image or an RGB numpy array
>>> record.score, record.raw, record.model_version
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

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

__all__ = [
    "ImageInput",
    "Prepared",
    "ScoreFailure",
    "ScoreRecord",
    "Scorer",
    "overlapped",
    "overlapped_with_save",
    "score",
    "score_batch",
]

ImageInput = str | Path | Image.Image | np.ndarray
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
S = TypeVar("S")


@dataclass(frozen=True)
class Prepared:
    """One photo decoded and patched, ready for :meth:`Scorer.infer` (``decoded`` without its pixels)."""

    path: str | None
    decoded: DecodedImage
    sequence: PatchSequence
    timings: dict[str, float]


def overlapped(items: Iterable[T], prepare: Callable[[T], P], finish: Callable[[P], R]) -> Iterator[R]:
    """``finish(prepare(item))`` for each item in order, preparing the next item (decoding: CPU work that
    releases the GIL) in a helper thread while the current one finishes (inference)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="musiqd-decode") as pool:
        pending: Future[P] | None = None
        for item in items:
            following = pool.submit(prepare, item)
            if pending is not None:
                yield finish(pending.result())
            pending = following
        if pending is not None:
            yield finish(pending.result())


def overlapped_with_save(
    items: Iterable[T], prepare: Callable[[T], P], finish: Callable[[P], R], save: Callable[[R], S]
) -> Iterator[S]:
    """``save(finish(prepare(item)))`` for each item in order: as :func:`overlapped`, and ``save`` (writing
    metadata, recording in the index: file I/O and Python) runs in a second helper thread, one item behind,
    while the calling thread runs the next ``finish``. The model then never waits for a write. Results come
    in the items' order; an exception raised by ``save`` reaches the caller with that item's result.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="musiqd-write") as pool:
        saving: Future[S] | None = None
        for finished in overlapped(items, prepare, finish):
            if saving is not None:
                yield saving.result()
            saving = pool.submit(save, finished)
        if saving is not None:
            yield saving.result()


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
        max_file_mb: Mapping[str, int] | None = None,
    ) -> None:
        catalogue = load_catalogue()
        self.installed: InstalledModel = load_installed(
            model or catalogue.default_model, variant or catalogue.default_variant, root=models_root
        )
        spec = self.installed.spec
        self.policy = policy or ResolutionPolicy(spec.max_side)
        self.max_pixels = max_pixels
        self.max_file_mb = max_file_mb
        self.engine: Engine = open_engine(
            self.installed.path, num_outputs=spec.head, device=device, threads=threads
        )

    @property
    def device(self) -> str:
        return self.engine.device

    @property
    def min_long_side(self) -> int | None:
        """The long side a decoder must keep for this model (None: full resolution)."""
        return self.policy.max_side

    def decode(
        self, image: ImageInput, *, min_long_side: int | Literal["own"] | None = "own"
    ) -> DecodedImage:
        """Decode one photo for this model (or, with ``min_long_side``, for the most demanding of several
        models that share one decode)."""
        if isinstance(image, Image.Image):
            return from_pil(image)
        if isinstance(image, np.ndarray):
            return from_array(image)
        side = self.min_long_side if min_long_side == "own" else min_long_side
        kwargs: dict[str, Any] = {"min_long_side": side}
        if self.max_pixels is not None:
            kwargs["max_pixels"] = self.max_pixels
        if self.max_file_mb is not None:
            kwargs["max_file_mb"] = self.max_file_mb
        return decode_image(Path(image), **kwargs)

    def patch(self, decoded: DecodedImage, path: str | None, decode_s: float = 0.0) -> Prepared:
        """The patch sequence of a decoded photo at this model's resolution policy."""
        t0 = time.perf_counter()
        sequence = make_tokens(limit_resolution(decoded.pixels, self.policy))
        # The tokens are all inference needs: the decoded pixels (megabytes) are not kept while the
        # photo waits for the model, only what the record reports about them.
        described = dataclasses.replace(decoded, pixels=_NO_PIXELS)
        timings = {"decode": decode_s, "preprocess": time.perf_counter() - t0}
        return Prepared(path, described, sequence, timings)

    def prepare(self, image: ImageInput) -> Prepared:
        """Decode and patch one photo (the CPU work that can overlap the previous photo's inference)."""
        t0 = time.perf_counter()
        decoded = self.decode(image)
        path = str(image) if isinstance(image, (str, Path)) else None
        return self.patch(decoded, path, time.perf_counter() - t0)

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

        return overlapped(images, prepare, self._finish)

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
