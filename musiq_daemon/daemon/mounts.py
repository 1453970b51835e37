"""The mounted filesystems (/proc/mounts): which filesystem a root is on, and whether it is a network one.

The watcher polls roots on network filesystems (their changes made by other machines produce no events),
and the root check notices a share that is no longer mounted where it was.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Filesystems whose changes by other machines produce no inotify events.
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "fuse", "sshfs", "ceph", "glusterfs",
        "afs", "davfs", "vboxsf", "vmhgfs", "drvfs", "lustre", "beegfs", "gpfs", "ncpfs", "coda",
    }
)  # fmt: skip

_OCTAL_ESCAPE: Final = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str

    @property
    def is_network(self) -> bool:
        return self.fstype in NETWORK_FILESYSTEMS or self.fstype.startswith("fuse.")


class MountTable:
    """The mounts of /proc/mounts, for finding the filesystem a path is on."""

    def __init__(self, mounts: list[Mount]) -> None:
        # Later entries mount over earlier ones at the same point.
        self._by_point = {m.point: m for m in mounts}

    @classmethod
    def read(cls, source: Path = Path("/proc/mounts")) -> MountTable:
        try:
            data = source.read_bytes()
        except OSError:  # not Linux, or /proc not mounted: every root counts as local
            return cls([])
        mounts = []
        for line in data.splitlines():
            fields = line.split()
            if len(fields) >= 3:
                point = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), fields[1])  # \040 is a space
                mounts.append(Mount(os.fsdecode(point), os.fsdecode(fields[2])))
        return cls(mounts)

    def mount_for(self, path: Path | str) -> Mount:
        """The mount with the longest mount point containing ``path`` (symbolic links resolved)."""
        real = os.path.realpath(path)
        best = Mount("/", "unknown")
        for point, mount in self._by_point.items():
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best.point):
                best = mount
        return best
