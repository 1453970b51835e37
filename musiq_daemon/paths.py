"""Where musiqd keeps its data (converted models, downloaded checkpoints).

Order: ``$MUSIQD_DATA_DIR``; systemd's ``$STATE_DIRECTORY`` (set by ``StateDirectory=musiqd``, i.e.
/var/lib/musiqd for the service); ``$XDG_DATA_HOME/musiqd``; ``~/.local/share/musiqd``.
Nothing is ever written into the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    explicit = os.environ.get("MUSIQD_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "musiqd"


def models_dir() -> Path:
    """Converted ``.tflite`` models: ``<data>/models/<id>/<variant>.tflite`` (+ ``.json``)."""
    explicit = os.environ.get("MUSIQD_MODEL_DIR")
    return Path(explicit).expanduser() if explicit else data_dir() / "models"


def checkpoints_dir() -> Path:
    """Downloaded official checkpoints (``*_ckpt.npz``), kept so a model can be re-converted offline."""
    return data_dir() / "checkpoints"
