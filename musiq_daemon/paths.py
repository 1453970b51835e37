"""Where musiqd keeps its data (converted models, downloaded checkpoints), and whether a photo really lies
in the folder it was found under.

Order: ``$MUSIQD_DATA_DIR``; systemd's ``$STATE_DIRECTORY`` (set by ``StateDirectory=musiqd``, i.e.
/var/lib/musiqd for the service); ``$XDG_DATA_HOME/musiqd``; ``~/.local/share/musiqd``.
Nothing is ever written into the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from musiq_daemon.errors import OutsideRootError, UsageError


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


def outside_root(path: Path, root: Path) -> Path | None:
    """Where ``path``'s folder really is when symbolic links in it lead out of ``root``; None when it is
    inside. The root itself may be reached through links (a share mounted elsewhere and linked in): both
    are resolved before they are compared. The photo's own name is not resolved: a photo that is a
    symbolic link is refused by whoever opens it (reads and writes never follow a linked photo file)."""
    real_root = Path(os.path.realpath(root))
    real_folder = Path(os.path.realpath(path.parent))
    return None if real_folder.is_relative_to(real_root) else real_folder


def check_inside(path: Path, root: Path) -> None:
    """Raise :class:`~musiq_daemon.errors.OutsideRootError` when links lead ``path`` out of ``root``."""
    real = outside_root(path, root)
    if real is not None:
        raise OutsideRootError(
            f"{path}: its folder is {real} through a symbolic link, outside {root}: musiqd does not follow "
            "links out of the folders it is given; add that folder as a root if it should be scored"
        )


class PathMap:
    """Where this machine sees the photos of the index: ``NAS_PATH=LOCAL_PATH`` pairs (``--path-map``).

    The index stores paths as the machine that watches the roots sees them; a worker that mounts the share
    elsewhere maps them to its own mount point to read and write files, and back to record them, so what
    the index holds never depends on where a worker mounted the share. The longest matching prefix wins;
    paths under no pair are the same on both sides.
    """

    def __init__(self, pairs: list[tuple[Path, Path]] | None = None) -> None:
        self.pairs = [(Path(os.path.abspath(a)), Path(os.path.abspath(b))) for a, b in pairs or []]

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...]) -> PathMap:
        """``["/volume1/photo=/mnt/nas/photo", ...]``; a one-line UsageError for a malformed pair."""
        pairs = []
        for item in items:
            index_side, sep, local_side = item.partition("=")
            if not sep or not index_side.strip() or not local_side.strip():
                raise UsageError(f"path map '{item}': use NAS_PATH=LOCAL_PATH (both absolute)")
            index_path, local_path = Path(index_side.strip()), Path(local_side.strip())
            if not index_path.is_absolute() or not local_path.is_absolute():
                raise UsageError(f"path map '{item}': both sides must be absolute paths")
            pairs.append((index_path, local_path))
        return cls(pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def describe(self) -> str:
        return ";".join(f"{a}={b}" for a, b in self.pairs)

    @staticmethod
    def _swap(path: Path, pairs: list[tuple[Path, Path]]) -> Path:
        for source, target in sorted(pairs, key=lambda pair: len(pair[0].parts), reverse=True):
            if path == source or path.is_relative_to(source):
                return target / path.relative_to(source)
        return path

    def local(self, path: Path) -> Path:
        """The index's path as this machine sees it."""
        return self._swap(path, self.pairs)

    def index(self, path: Path) -> Path:
        """This machine's path as the index stores it."""
        return self._swap(path, [(b, a) for a, b in self.pairs])


#: No mapping: the index's paths are this machine's.
SAME_PATHS = PathMap()
