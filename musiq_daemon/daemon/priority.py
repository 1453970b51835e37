"""The daemon's CPU and I/O priority (``nice`` and ``ioclass`` of the configuration).

Scoring is background work: by default the daemon runs at nice 10 and in the idle I/O class, so that it
never slows down the machine's owner. Linux keeps both per thread, and new threads inherit them from
their creator: they are set once, before any thread starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import Final

log = logging.getLogger("musiqd")

# ioprio_set(2) has no wrapper in Python's os module; its number differs per architecture.
_IOPRIO_SET: Final = {"x86_64": 251, "i386": 289, "i686": 289, "aarch64": 30, "riscv64": 30, "armv7l": 314,
                      "armv6l": 314, "ppc64le": 273, "ppc64": 273, "s390x": 282}  # fmt: skip
_IOPRIO_CLASSES: Final = {"best-effort": 2, "idle": 3}


def lower_priority(nice: int, ioclass: str) -> None:
    """Best effort, logged: ``nice`` and I/O class for the whole process. Called before any thread starts:
    Linux keeps both per thread, and new threads inherit them from their creator."""
    if nice:
        # An absolute level that only goes down in priority: under systemd (Nice=10) os.nice() would add
        # up to 19; a process already nicer than asked stays as it is.
        try:
            current = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, max(current, nice))
            log.info("CPU priority: nice %d", os.getpriority(os.PRIO_PROCESS, 0))
        except OSError as exc:
            log.warning("cannot set nice %d: %s", nice, exc.strerror)
    if ioclass not in _IOPRIO_CLASSES:
        return
    number = _IOPRIO_SET.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        log.warning("ionice %s: not supported on this platform", ioclass)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    value = _IOPRIO_CLASSES[ioclass] << 13 | (7 if ioclass == "best-effort" else 0)  # lowest level
    if libc.syscall(number, 1, 0, value) != 0:  # IOPRIO_WHO_PROCESS, this process
        log.warning("cannot set I/O class %s: %s", ioclass, os.strerror(ctypes.get_errno()))
    else:
        log.info("I/O priority: %s", ioclass)


__all__ = ["lower_priority"]
