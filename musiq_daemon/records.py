"""What scoring produces: one photo scored by one model, or a photo that could not be scored.

A leaf module: the scorer, the metadata writer, the index and the commands all import it, and it imports
nothing of theirs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from musiq_daemon.errors import MusiqError


@dataclass(frozen=True)
class ScoreRecord:
    """One photo scored by one model. Everything needed to trace and reproduce the score."""

    score: float  # on the model's reported scale (scale_min..scale_max)
    raw: float  # the model's own output (MOS 0..100, or the AVA 1..10 mean)
    model_id: str
    model_version: str  # sha256 prefix of the source checkpoint
    variant: str
    model_sha256: str  # the exact .tflite that ran
    scale_min: float
    scale_max: float
    resolution_policy: str  # "max_side=1024" or "full": it changes the score, so it is recorded
    device: str
    num_tokens: int
    scored_size: tuple[int, int]  # (height, width) of the native scale that was patched
    stored_size: tuple[int, int]  # (width, height) of the photo as stored
    source: str  # how pixels were obtained (full decode, DCT-scaled, RAW preview, ...)
    format: str
    orientation_applied: bool
    scored_at: str  # ISO 8601 with the local zone offset
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, preprocess, inference
    path: str | None = None

    @property
    def duration(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scored_size"] = list(self.scored_size)
        data["stored_size"] = list(self.stored_size)
        data["duration"] = self.duration
        return data


@dataclass(frozen=True)
class ScoreFailure:
    """A photo that could not be scored, with a one-line reason (the batch goes on)."""

    path: str | None
    error: MusiqError
