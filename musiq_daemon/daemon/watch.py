"""Watching roots: file system events in, complete photos out.

The watcher only makes new photos arrive sooner; the reconciliation scan (:mod:`.scan`) stays the source of
truth, so an event that is missed costs latency, never correctness.

Observers. ``observer = auto`` uses the kernel's notifications (inotify) on local filesystems and polling
on network and virtual filesystems, whose changes made by other machines produce no events: nfs, cifs/smb,
fuse.* (sshfs, rclone...), 9p, virtiofs and the like, found in /proc/mounts by the longest mount point
containing the root (``fuseblk``, e.g. NTFS disks, is local and watched natively). When the inotify watch
or instance limit is reached the root falls back to polling and the sysctl fix is logged. Polling walks
the root every ``poll_interval`` seconds (minutes on a NAS: a 1 s poll of a big share costs a core) with
a lean emitter of its own (:class:`_PollingEmitter`).

Completeness. An event does not mean a photo is complete: a copy takes a while, and a half-copied JPEG
decodes to grey and would get a wrong score. The :class:`Settler` holds each candidate until

1. no event came for ``quiet_period`` seconds (every write restarts the timer),
2. its size and modification time did not change across that quiet period (two stats; network shares
   deliver writes without events),
3. the writer closed it, when the observer reports that (inotify's close-after-write; a moved-to event
   counts as closed: the file was complete when it was renamed into place), and
4. it passes a structural check: its content hash, which walks a JPEG's or PNG's structure to its end
   marker (a truncated file fails), and decodes the formats it cannot parse.

A candidate that never gets there is checked anyway after ``max_wait`` seconds, so a file that keeps
changing cannot starve. A closed, stable file that fails the check (an aborted copy, a corrupt file) is
handed on too: the worker then records a failed job with the reason. Without close reports (polling), a
stable file that fails the check waits for ``max_wait``: it may be a copy that stalled.

Ignored: names the filter rejects (temp files, NAS junk folders, sidecars: a sidecar change never
rescores) and versions musiqd wrote itself or already indexed (``known``, checked before anything is
read). Deletions and moves away are reported (``on_gone``) in batches; a move's destination is a new
candidate, which keeps its score through the content hash.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, Literal

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, EventEmitter, EventQueue, ObservedWatch

from musiq_daemon.daemon.mounts import MountTable
from musiq_daemon.discover import PathFilter, walk
from musiq_daemon.errors import DecodeError
from musiq_daemon.metadata.content_hash import content_hash_file

log = logging.getLogger("musiqd.watch")

ObserverMode = Literal["native", "poll"]

INOTIFY_LIMIT_MESSAGE: Final = (
    "inotify watch limit reached: sysctl fs.inotify.max_user_watches=524288 (or use observer = poll)"
)
_EVENTS: Final = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
    DirMovedEvent, DirDeletedEvent,
]  # fmt: skip


def choose_observer(root: Path, setting: str, mounts: MountTable) -> tuple[ObserverMode, str]:
    """(mode, why) for ``root`` under ``observer = auto | native | poll``."""
    if setting == "poll":
        return "poll", "observer = poll"
    if setting == "native":
        return "native", "observer = native"
    mount = mounts.mount_for(root)
    if mount.is_network:
        return "poll", f"{mount.fstype} at {mount.point} delivers no events for remote changes"
    return "native", f"local {mount.fstype} filesystem"


def filesystem_of(root: Path, mounts: MountTable) -> str:
    """The filesystem ``root`` is on now, as "fstype at mount point (device N)": it changes when a share is
    mounted on the root (or unmounted from it) after the watcher started, and the watcher must follow."""
    mount = mounts.mount_for(root)
    try:
        device = root.stat().st_dev
    except OSError:
        device = -1
    return f"{mount.fstype} at {mount.point} (device {device})"


# --- settling candidates -----------------------------------------------------------------------------------


@dataclass
class _Candidate:
    first_seen: float
    deadline: float
    closed: bool | None  # None: unknown (no event said); False: written since the last close
    signature: tuple[int, int] | None  # (size, mtime_ns) at the last event or check
    generation: int = 0  # bumped by every event, so a check racing with a new write is discarded


EventKind = Literal["created", "modified", "closed", "moved-in", "scanned"]


class Settler:
    """Holds candidate files until they are complete (see the module doc), in a thread of its own.

    ``on_ready(path, content_hash)`` receives each complete file (``content_hash`` None when the check
    failed and the file is handed on anyway); ``on_gone(files, folders)`` batches of deleted or moved-away
    paths; ``known(path, stat)`` says that a version needs nothing (musiqd wrote it, or the index has it).
    Callbacks run in the settler's thread; an exception is logged and the candidate retried later.
    """

    def __init__(
        self,
        on_ready: Callable[[Path, str | None], None],
        on_gone: Callable[[list[Path], list[Path]], None],
        known: Callable[[Path, os.stat_result], bool],
        *,
        quiet_period: float,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_ready, self._on_gone, self._known = on_ready, on_gone, known
        self.quiet_period, self.max_wait = quiet_period, max_wait
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, _Candidate] = {}
        self._gone_files: list[Path] = []
        self._gone_dirs: list[Path] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="musiqd-settler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (a check in progress finishes); :meth:`join` waits for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def configure(self, *, quiet_period: float, max_wait: float) -> None:
        with self._cond:
            self.quiet_period, self.max_wait = quiet_period, max_wait
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def touch(self, path: str, kind: EventKind) -> None:
        """An event for ``path`` (or a scan found it freshly modified): (re)start its quiet period."""
        try:
            info = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISREG(info.st_mode):
            return
        now = self._clock()
        with self._cond:
            cand = self._pending.get(path)
            if cand is None:
                cand = _Candidate(now, now, None, None)
                self._pending[path] = cand
            if kind == "modified":
                cand.closed = False
            elif kind in ("closed", "moved-in"):
                cand.closed = True
            cand.signature = (info.st_size, info.st_mtime_ns)
            cand.generation += 1
            cand.deadline = min(now + self.quiet_period, cand.first_seen + self.max_wait)
            self._cond.notify_all()

    def gone(self, path: str, *, folder: bool = False) -> None:
        with self._cond:
            if folder:
                prefix = path.rstrip("/") + "/"
                for key in [k for k in self._pending if k.startswith(prefix)]:
                    del self._pending[key]
                self._gone_dirs.append(Path(path))
            else:
                self._pending.pop(path, None)
                self._gone_files.append(Path(path))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = self._clock()
                    due = [p for p, c in self._pending.items() if c.deadline <= now]
                    if due or self._gone_files or self._gone_dirs:
                        break
                    wake = min((c.deadline for c in self._pending.values()), default=None)
                    self._cond.wait(None if wake is None else max(wake - now, 0.01))
                files, dirs = self._gone_files, self._gone_dirs
                self._gone_files, self._gone_dirs = [], []
            if files or dirs:
                try:
                    self._on_gone(files, dirs)
                except Exception:
                    log.exception("recording deleted files failed")
            for path in due:
                if self._stopping:
                    return
                self._check(path)

    def _check(self, path: str) -> None:
        with self._cond:
            cand = self._pending.get(path)
            if cand is None:
                return
            generation, closed, signature = cand.generation, cand.closed, cand.signature
            forced = self._clock() >= cand.first_seen + self.max_wait
        try:
            info = os.lstat(path)
        except OSError:
            self._drop(path, generation)
            return
        now_signature = (info.st_size, info.st_mtime_ns)
        try:
            if not stat.S_ISREG(info.st_mode) or self._known(Path(path), info):
                self._drop(path, generation)
                return
            if not forced and (now_signature != signature or closed is False):
                self._wait(path, generation, now_signature)  # still changing, or still open for writing
                return
            try:
                digest: str | None = content_hash_file(Path(path))
            except DecodeError:
                digest = None
            if digest is None and not forced and closed is None:
                self._wait(path, generation, now_signature)  # may be a stalled copy: give it time
                return
            if not self._drop(path, generation):
                return  # written to while it was being checked: wait for the next quiet period
            self._on_ready(Path(path), digest)
        except Exception:
            log.exception("checking %s failed; retried later", path)
            self._wait(path, -1, now_signature, delay=max(self.quiet_period, 5.0))

    def _drop(self, path: str, generation: int) -> bool:
        """Forget ``path`` unless an event came since ``generation`` was read."""
        with self._cond:
            cand = self._pending.get(path)
            if cand is None or cand.generation != generation:
                return False
            del self._pending[path]
            return True

    def _wait(
        self, path: str, generation: int, signature: tuple[int, int], *, delay: float | None = None
    ) -> None:
        with self._cond:
            cand = self._pending.get(path)
            if cand is None or (generation >= 0 and cand.generation != generation):
                return  # a new event rescheduled it already
            cand.signature = signature
            cand.deadline = self._clock() + (self.quiet_period if delay is None else delay)


# --- observers ---------------------------------------------------------------------------------------------


class _Handler(FileSystemEventHandler):
    """Turns one root's events into settler calls, dropping everything the filter rejects.

    ``reports_close``: the observer reports close-after-write (inotify). Polling does not: a change it
    sees says nothing about the file being open, so it restarts the quiet period without marking the file
    as written-and-not-closed (which would hold it until ``max_wait``).
    """

    def __init__(
        self, root: Path, path_filter: PathFilter, settler: Settler, *, reports_close: bool = True
    ) -> None:
        self._root = str(root)
        self._filter = path_filter
        self._settler = settler
        self._reports_close = reports_close

    def dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.is_directory:
            if event.event_type in ("deleted", "moved"):
                if src == self._root:
                    self._settler.gone(src, folder=True)  # the daemon checks the root: never "all deleted"
                elif src and self._folder_wanted(src):
                    self._settler.gone(src, folder=True)
                if dest and self._folder_wanted(dest):
                    self._moved_in_folder(dest)
            return
        if event.event_type in ("deleted", "moved") and src and self._wanted(src):
            self._settler.gone(src)
        kind = _KINDS.get(event.event_type)
        if kind == "modified" and not self._reports_close:
            kind = "scanned"
        target = dest if event.event_type == "moved" else src
        if kind is not None and target and self._wanted(target):
            self._settler.touch(target, kind)

    def _wanted(self, path: str) -> bool:
        return self._filter.path_wanted(path, self._root)

    def _folder_wanted(self, path: str) -> bool:
        return self._filter.folder_wanted(path, self._root)

    def _moved_in_folder(self, folder: str) -> None:
        """A folder renamed into the root: its photos are complete (inotify reports them as created)."""
        for found in walk(folder, self._filter):
            self._settler.touch(found.entry.path, "moved-in")


_KINDS: Final[dict[str, EventKind]] = {
    "created": "created",
    "modified": "modified",
    "closed": "closed",
    "moved": "moved-in",
}


class RootWatcher:
    """One root's observer. ``mode`` is what really runs (after any fallback), ``reason`` why."""

    def __init__(
        self, root: Path, mode: ObserverMode, reason: str, observer: BaseObserver, filesystem: str
    ) -> None:
        self.root, self.mode, self.reason = root, mode, reason
        self.filesystem = filesystem  # what it was started on: see filesystem_of
        self._observer = observer

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        setting: str,
        poll_interval: float,
        path_filter: PathFilter,
        settler: Settler,
        mounts: MountTable | None = None,
    ) -> RootWatcher:
        table = mounts or MountTable.read()
        filesystem = filesystem_of(root, table)
        mode, reason = choose_observer(root, setting, table)
        if mode == "native":
            try:
                return cls(
                    root,
                    "native",
                    reason,
                    _start_native(root, _Handler(root, path_filter, settler)),
                    filesystem,
                )
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.warning("%s: %s", root, INOTIFY_LIMIT_MESSAGE)
                mode, reason = "poll", "inotify limit reached"
        handler = _Handler(root, path_filter, settler, reports_close=False)
        observer = _polling_observer(path_filter, poll_interval)
        observer.schedule(handler, str(root), recursive=True, event_filter=_EVENTS)
        observer.start()
        return cls(root, mode, reason, observer, filesystem)

    def alive(self) -> bool:
        """The observer and its emitters still run (a polling emitter stops when its root vanishes)."""
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)

    def stop(self) -> None:
        """Ask the observer to stop; :meth:`join` waits for it."""
        self._observer.stop()

    def join(self, timeout: float) -> None:
        if self._observer.is_alive():
            self._observer.join(timeout)


def _start_native(root: Path, handler: _Handler) -> BaseObserver:
    observer: BaseObserver
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # Full events: a file moved in from outside the root arrives as "moved" (complete), not "created".
        observer = InotifyObserver(generate_full_events=True)
    else:
        from watchdog.observers import Observer

        observer = Observer()
    try:
        observer.schedule(handler, str(root), recursive=True, event_filter=_EVENTS)
        observer.start()  # adds the watches: raises OSError(ENOSPC/EMFILE) at the inotify limits
    except OSError:
        with contextlib.suppress(Exception):
            observer.stop()  # releases the inotify instance the observer opened
        raise
    return observer


class _PollingEmitter(EventEmitter):
    """Polls one root: a walk that records (inode, size, mtime_ns) of every photo, then events for the
    differences from the previous walk (a photo whose inode reappears under another name is a move).

    Only photos that pass the filter are listed and stat'ed, and nothing else is kept: on a NAS, thumbnail
    folders hold more files than the photos do. This costs less than half of watchdog's generic polling
    emitter (which stats and keeps every entry and diffs full stat results), which matters because a
    50,000-photo share is walked every ``poll_interval`` forever. Symbolic links are not followed.

    A walk that finds no photo at all where the last one found some is not believed: that is what an
    unmounted share looks like (the daemon's root check reports it); the previous state is kept, so the
    photos do not all come back as new when the share is mounted again. Folders that cannot be read keep
    their previous entries for the same reason.
    """

    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: float,
        event_filter: list[type[FileSystemEvent]] | None = None,
        path_filter: PathFilter,
    ) -> None:
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        self._filter = path_filter
        self._files: dict[str, tuple[int, int, int]] = {}
        self._failing = False
        self._empty = False  # the last walk found nothing where there were photos

    def on_thread_start(self) -> None:
        self._files = self._walk(self._files)

    def queue_events(self, timeout: float) -> None:
        if self.stopped_event.wait(timeout):
            return
        try:
            files = self._walk(self._files)
        except OSError as exc:
            if not self._failing:  # a share briefly unreachable: logged once, tried again next time
                log.warning("cannot poll %s: %s", self.watch.path, exc.strerror or exc)
                self._failing = True
            return
        self._failing = False
        if not files and self._files:
            if not self._empty:
                self._empty = True
                self.queue_event(DirDeletedEvent(self.watch.path))  # the daemon checks the root now
            return
        self._empty = False
        old, self._files = self._files, files
        gone = old.keys() - files.keys()
        gone_by_inode = {old[path][0]: path for path in gone}
        for path in sorted(files.keys() - old.keys()):
            source = gone_by_inode.pop(files[path][0], None)
            if source is not None:
                gone.discard(source)
                self.queue_event(FileMovedEvent(source, path))
            else:
                self.queue_event(FileCreatedEvent(path))
        for path in sorted(gone):
            self.queue_event(FileDeletedEvent(path))
        for path, version in files.items():
            before = old.get(path)
            if before is not None and before != version:
                self.queue_event(FileModifiedEvent(path))

    def _walk(self, previous: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        files: dict[str, tuple[int, int, int]] = {}

        def unreadable(folder: str, rel: str, exc: OSError) -> None:
            if not rel:
                raise exc  # the root: queue_events reports it
            prefix = folder + "/"
            files.update((p, v) for p, v in previous.items() if p.startswith(prefix))

        for found in walk(os.fsdecode(self.watch.path), self._filter, on_error=unreadable):
            try:
                info = found.entry.stat(follow_symlinks=False)
            except OSError:  # gone between listing and stat
                continue
            files[found.entry.path] = (info.st_ino, info.st_size, info.st_mtime_ns)
        return files


def _polling_observer(path_filter: PathFilter, interval: float) -> BaseObserver:
    # A partial, as watchdog's own PollingObserverVFS passes its emitter's options (older watchdog
    # versions pass no extra arguments to emitters).
    emitter = partial(_PollingEmitter, path_filter=path_filter)
    return BaseObserver(emitter, timeout=interval)  # type: ignore[arg-type]
