"""How far a scan of the daemon is: a progress bar on a terminal, otherwise a log line every few seconds
(journald, log files); during the initial scan also systemd's status line, which keeps extending
systemd's start timeout (a first scan of a big share takes minutes, and READY=1 waits for it)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from musiq_daemon.daemon.scan import ScanProgress
from musiq_daemon.daemon.systemd import sd_notify

log = logging.getLogger("musiqd")

PROGRESS_LOG_S: Final = 5.0  # scan progress lines when stderr is not a terminal
# Extends systemd's start timeout while the initial scan runs (a first scan of a big share takes minutes).
START_EXTEND_USEC: Final = 60_000_000


class ScanProgressDisplay:
    """A progress bar on a terminal; otherwise a log line every few seconds (journald, files)."""

    def __init__(self, root: Path, *, initial: bool) -> None:
        self._root, self._initial = root, initial
        self._bar: Any = None
        self._task: Any = None
        self._next_log = time.monotonic() + PROGRESS_LOG_S

    def __enter__(self) -> Callable[[ScanProgress], None]:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("scanning {task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(str(self._root), total=None)
        return self.update

    def update(self, progress: ScanProgress) -> None:
        if self._bar is not None:
            # The index's count is the expected total on a rescan; on a first scan it is unknown.
            total = progress.expected if progress.expected >= progress.files else None
            self._bar.update(self._task, completed=progress.files, total=total)
        elif time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + PROGRESS_LOG_S
            log.info("scanning %s: %d photos so far", self._root, progress.files)
        if self._initial:
            # Keeps systemd from timing out a long first scan, and shows where it is.
            sd_notify(f"EXTEND_TIMEOUT_USEC={START_EXTEND_USEC}\nSTATUS=scanning {self._root}: "
                      f"{progress.files} photos")  # fmt: skip

    def __exit__(self, *_exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


__all__ = ["ScanProgressDisplay"]
