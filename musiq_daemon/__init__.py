"""musiqd: MUSIQ image-quality scores for photo libraries."""

from __future__ import annotations

__version__ = "0.1.0"
