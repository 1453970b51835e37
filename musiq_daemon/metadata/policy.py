"""What the metadata writer is told: :class:`WritePolicy`, its choices and the star thresholds' rules.

Apart from :mod:`musiq_daemon.metadata.writer` (exiv2, the image decoders) so that the configuration, which
holds a policy, can be loaded by every command without loading the writer: ``musiqd status`` or
``musiqd config show`` write no metadata. The writer and :mod:`musiq_daemon.metadata.xmp` re-export these
names; what each choice means is explained in the writer's docstring.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from musiq_daemon.catalogue import default_star_thresholds
from musiq_daemon.errors import UsageError

Mode = Literal["embed", "sidecar", "index-only"]
DngMode = Literal["sidecar", "embed"]
SidecarNaming = Literal["replace", "append"]

Thresholds = tuple[float, float, float, float]

#: Starting points, not calibrations, from the model catalogue (``stars`` of each model in
#: models_tflite/manifest.toml): tune them to a collection's score distribution. On the 1..5 MOS scale the
#: 3-star bucket is meant for ordinary photos, 4-5 stars for ones that stand out and 1-2 stars for visible
#: problems; AVA's 1..10 aesthetic means sit in a narrower band around 5, hence its boundaries.
DEFAULT_STAR_THRESHOLDS: Final[Mapping[str, Thresholds]] = default_star_thresholds()

_MODEL_ID: Final = re.compile(r"[a-z][a-z0-9_]*\Z")


def check_model_id(model_id: str) -> str:
    """``model_id`` if it can name an XMP property, else a :class:`UsageError`."""
    if not _MODEL_ID.match(model_id):
        raise UsageError(
            f"model id '{model_id}' cannot name an XMP property: use lower-case letters, digits and _"
        )
    return model_id


def check_thresholds(model_id: str, thresholds: Sequence[float]) -> Thresholds:
    """Four strictly increasing finite boundaries, else a :class:`UsageError`."""
    problem = UsageError(
        f"star thresholds for '{model_id}' must be 4 increasing finite numbers (the scores for 2, 3, 4 and "
        f"5 stars), got {thresholds!r}"
    )
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise problem from None
    if len(values) != 4 or not all(map(math.isfinite, values)):
        raise problem
    if any(not b > a for a, b in itertools.pairwise(values)):
        raise problem
    return values[0], values[1], values[2], values[3]


@dataclass(frozen=True)
class WritePolicy:
    """Where and what :func:`~musiq_daemon.metadata.writer.write_score` writes (see the writer's
    docstring)."""

    mode: Mode = "embed"
    dng: DngMode = "sidecar"
    sidecar_naming: SidecarNaming = "append"
    # The model whose score sets xmp:Rating; None writes no stars.
    rating_model: str | None = "koniq"
    # Per model: the 4 boundaries on the reported scale for 2, 3, 4 and 5 stars. A model without an entry
    # gets neither stars nor a bucket keyword.
    star_thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_STAR_THRESHOLDS))
    keywords: bool = True  # write the bucket keywords
    best_of_burst: bool = True  # mark the best photo of each burst with MUSIQ|best-of-burst (musiqd cull)
    preserve_mtime: bool = False  # see the writer's docstring before turning this on

    def __post_init__(self) -> None:
        for name, kind in (("mode", Mode), ("dng", DngMode), ("sidecar_naming", SidecarNaming)):
            value = getattr(self, name)
            if value not in get_args(kind):
                choices = ", ".join(get_args(kind))
                raise UsageError(f"write policy: unknown {name} '{value}': choose one of {choices}")
        checked = {
            check_model_id(model): check_thresholds(model, bounds)
            for model, bounds in self.star_thresholds.items()
        }
        object.__setattr__(self, "star_thresholds", checked)
        if self.rating_model is not None and self.rating_model not in checked:
            raise UsageError(
                f"write policy: the rating model '{self.rating_model}' has no star thresholds; "
                "add them or set rating_model to None"
            )
