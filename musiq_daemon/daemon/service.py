"""``musiqd watch``: the daemon's main loop.

Start-up: take the single-instance lock (:mod:`.lock`), lower the process's CPU and I/O priority
(:mod:`.priority`), requeue jobs a killed daemon left running, remove its stale temporary files, start
the watchers (before the scan, so that no photo arriving during the scan is missed) and the workers, then
scan every root. READY=1 goes to systemd (:mod:`.systemd`) once the initial scan has queued everything; a
long first scan keeps extending systemd's start timeout (:mod:`.progress`).

The main thread only keeps time: signals, pause and quiet hours, the systemd watchdog, the state row that
``musiqd status`` reads (:mod:`.state`), root health, reloads. Scans run in a thread of their own, the
settler and the observers in theirs, scoring in the workers'.

Signals: SIGTERM and SIGINT stop within seconds (a worker finishes or requeues its photo), SIGHUP reloads
the configuration (changed roots or observer settings restart the watchers and rescan; model settings
restart the workers; the database, nice and ionice need a restart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.engine import make_url

from musiq_daemon.daemon.lock import RootLocks
from musiq_daemon.daemon.mounts import MountTable
from musiq_daemon.daemon.priority import lower_priority
from musiq_daemon.daemon.progress import ScanProgressDisplay
from musiq_daemon.daemon.scan import (
    ScanProgress,
    has_photos,
    ingest_file,
    known_version,
    mark_missing,
    mark_missing_under,
    root_unavailable,
    scan_root,
)
from musiq_daemon.daemon.state import read_state, write_state
from musiq_daemon.daemon.systemd import sd_notify, watchdog_interval
from musiq_daemon.daemon.watch import RootWatcher, Settler, filesystem_of
from musiq_daemon.discover import PathFilter
from musiq_daemon.errors import MusiqError, UsageError
from musiq_daemon.index.db import url_for
from musiq_daemon.index.models import Photo
from musiq_daemon.index.paths import decode_path, encode_path
from musiq_daemon.index.records import now
from musiq_daemon.metadata.safefile import cleanup_stale_temps
from musiq_daemon.version import __version__

if TYPE_CHECKING:
    from musiq_daemon.config import Config
    from musiq_daemon.daemon.worker import Worker
    from musiq_daemon.index.db import IndexDB

log = logging.getLogger("musiqd")

HEARTBEAT_S: Final = 5.0  # state row and systemd STATUS
ROOT_CHECK_S: Final = 10.0  # unmounted shares, dead observers
CULL_INTERVAL_S: Final = 5.0  # new scored photos grouped into bursts
# A burst is marked once it has not changed for two rounds: one still being copied in is regrouped every
# round, and marking each passing best would rewrite photos for nothing.
BURST_SETTLE_S: Final = 2 * CULL_INTERVAL_S
ROOTS_REFRESH_S: Final = 600.0  # the culler's condition for "under this daemon's roots", worked out anew
SCAN_RETRY_S: Final = 60.0  # a scan that failed (the index busy or unreachable) is tried again after this
STOP_GRACE_S: Final = 4.0  # workers get this long to finish or requeue their photo
# An idle worker looks for due jobs (retries, jobs queued by `musiqd notify` or `rescore`) this often: a
# claim costs about 2 ms, i.e. 0.1% of a core at this interval. The daemon's own new jobs wake it at once
# (_WorkerSignal).
WORKER_POLL_S: Final = 2.0
# Fields whose change needs new watchers (and a rescan), new workers, or a restart.
_WATCH_FIELDS: Final = ("roots", "include", "exclude", "observer", "poll_interval")
_WORKER_FIELDS: Final = (
    "models", "variant", "device", "threads", "workers", "resolution", "max_pixels", "max_file_mb", "write",
    "retries", "retry_backoff",
)  # fmt: skip
_RESTART_FIELDS: Final = ("database", "nice", "ioclass")


# --- the service -------------------------------------------------------------------------------------------


class _WorkerSignal(threading.Event):
    """A worker's stop event that can also be nudged: :meth:`nudge` ends the worker's idle wait (new jobs
    were queued) without stopping it, so the worker polls the queue rarely yet starts on new photos at
    once."""

    def __init__(self) -> None:
        super().__init__()
        self._signal = threading.Condition()
        self._nudged = False

    def set(self) -> None:
        with self._signal:
            super().set()
            self._signal.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        with self._signal:
            if not self.is_set() and not self._nudged:
                self._signal.wait(timeout)
            self._nudged = False
            return self.is_set()

    def nudge(self) -> None:
        with self._signal:
            self._nudged = True
            self._signal.notify_all()


@dataclass
class _RootState:
    root: Path
    expected_mount: str | None  # the separate filesystem the root was on at start-up
    watcher: RootWatcher | None = None
    unavailable: str | None = None


class Service:
    def __init__(self, config: Config, *, reload: Callable[[], Config] | None = None) -> None:
        self.config = self._checked(config)
        self._reload_config = reload
        self._stop = threading.Event()  # set once: the daemon is stopping
        self._wake = threading.Event()  # wakes the main loop (signal, scan finished)
        self._reload_requested = False
        self._scan_request = threading.Event()
        self._scan_roots: set[Path] = set()
        self._scanning = False
        self._initial_scan_done = False
        self._lock = threading.Lock()
        self._roots: dict[Path, _RootState] = {}
        self._paused = threading.Event()  # what the workers obey: pause, or quiet hours
        self._workers: list[tuple[Worker, threading.Thread, _WorkerSignal]] = []
        self._retired = {"done": 0, "failed": 0, "busy_s": 0.0}  # stats of workers replaced by a reload
        self._started_at = now()
        self._db: IndexDB | None = None
        self._settler: Settler | None = None
        self._locks: RootLocks | None = None
        self._watcher_id: str | None = None  # this daemon's row in the registry
        self._device: str | None = None

    @staticmethod
    def _checked(config: Config) -> Config:
        if not config.roots:
            raise UsageError("no roots to watch: give ROOT arguments or set roots in the configuration")
        return config

    @property
    def db(self) -> IndexDB:
        assert self._db is not None
        return self._db

    @property
    def settler(self) -> Settler:
        assert self._settler is not None
        return self._settler

    # --- lifecycle

    def run(self) -> int:
        from musiq_daemon.daemon.queue import requeue_stale
        from musiq_daemon.index.db import open_index

        url = url_for(self.config.database)
        locks = RootLocks.acquire(url, self.config.roots)
        self._locks = locks
        try:
            lower_priority(self.config.nice, self.config.ioclass)
            self._db = open_index(self.config.database)
            log.info("musiqd %s watching %s (index %s)", __version__, _roots_text(self.config.roots),
                     make_url(url).render_as_string(hide_password=True))  # fmt: skip
            stale = requeue_stale(self.db, retries=self.config.retries)
            if stale.requeued:
                log.info("requeued %d photos left running by a previous run", stale.requeued)
            for path, message in stale.given_up:
                log.warning("%s failed: %s", path, message)
            from musiq_daemon.daemon import registry
            from musiq_daemon.daemon.queue import owner_id

            self._watcher_id = owner_id()
            registry.register(self.db, registry.Registration(
                self._watcher_id, "watcher", None, ",".join(self.config.models), None,
                _roots_json(self.config.roots),
            ))  # fmt: skip
            write_state(self.db, pid=os.getpid(), host=socket.gethostname(), state="starting",
                        started_at=self._started_at, heartbeat_at=now(), done=0, failed=0, busy_s=0.0,
                        roots=_roots_json(self.config.roots), models=",".join(self.config.models),
                        device=None, message=None)  # fmt: skip
            self._install_signals()
            self._settler = Settler(
                self._on_ready, self._on_gone, self._known,
                quiet_period=self.config.quiet_period, max_wait=self.config.max_wait,
            )  # fmt: skip
            self.settler.start()
            self._start_roots(cleanup=True)
            self._update_pause()  # a pause requested while stopped holds from the first photo on
            self._start_workers(self._make_workers())
            scanner = threading.Thread(target=self._scanner, name="musiqd-scan", daemon=True)
            self._request_scan(self.config.roots)
            scanner.start()
            if self.config.cull:
                threading.Thread(target=self._culler, name="musiqd-cull", daemon=True).start()
            self._main_loop()
            return 0
        finally:
            self._shutdown()
            locks.release()

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self._stop.set()
            self._wake.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _shutdown(self) -> None:
        """Everything is asked to stop first, then waited for against one deadline: systemd (and the user
        pressing Ctrl-C) expect an exit within seconds."""
        self._stop.set()
        self._scan_request.set()
        sd_notify("STOPPING=1")
        deadline = time.monotonic() + STOP_GRACE_S
        for _worker, _thread, stop in self._workers:
            stop.set()
        watchers = [s.watcher for s in self._roots.values() if s.watcher is not None]
        for watcher in watchers:
            watcher.stop()
        if self._settler is not None:
            self._settler.stop()
            self._settler.join(max(deadline - time.monotonic(), 0.1))
        for watcher in watchers:
            watcher.join(max(deadline - time.monotonic(), 0.1))
        for _worker, thread, _stop in self._workers:
            thread.join(max(deadline - time.monotonic(), 0.1))
            if thread.is_alive():
                log.warning("a worker did not stop in time; its photo is requeued at the next start")
        if self._db is not None:
            try:
                write_state(self.db, state="stopped", heartbeat_at=now(), **self._stats())
                if self._watcher_id is not None:
                    from musiq_daemon.daemon import registry

                    for worker, _thread, _stop in self._workers:  # those that did not stop in time
                        mine = worker.stats()
                        registry.beat(self.db, worker.owner, state="stopped", done=mine.done,
                                      failed=mine.failed, busy_s=mine.busy_s)  # fmt: skip
                    registry.beat(self.db, self._watcher_id, state="stopped", **self._stats())
            except Exception as exc:  # the database may be the reason we stop
                log.warning("cannot record the stopped state: %s", exc)
            self.db.close()
        log.info("stopped")

    # --- main loop

    def _main_loop(self) -> None:
        ping = watchdog_interval()
        tick = min(1.0, ping) if ping else 1.0
        next_ping = next_beat = next_root_check = 0.0
        while not self._stop.is_set():
            clock = time.monotonic()
            if ping and clock >= next_ping:
                sd_notify("WATCHDOG=1")
                next_ping = clock + ping
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                state = self._update_pause()
                if clock >= next_root_check:
                    next_root_check = clock + ROOT_CHECK_S
                    self._check_roots()
                if clock >= next_beat:
                    next_beat = clock + HEARTBEAT_S
                    self._heartbeat(state)
            except Exception as exc:
                # The index may be busy or briefly unreachable (a database server restarting): the next
                # tick tries again; the workers and the watcher go on meanwhile.
                log.warning("main loop: %s; retrying", str(exc).splitlines()[0])
            self._wake.wait(tick)
            self._wake.clear()

    def _update_pause(self) -> str:
        """Apply ``musiqd pause`` and quiet hours to the workers; returns the state to show."""
        row = read_state(self.db)
        paused = bool(row is not None and row.paused)
        quiet = self.config.in_quiet_hours(datetime.now().time())
        if paused or quiet:
            if not self._paused.is_set():
                log.info("scoring paused (%s)", "musiqd pause" if paused else "quiet hours")
            self._paused.set()
        elif self._paused.is_set():
            log.info("scoring resumed")
            self._paused.clear()
            self._nudge_workers()
        if paused:
            return "paused"
        if quiet:
            return "quiet-hours"
        return "scanning" if self._scanning else "running"

    def _heartbeat(self, state: str) -> None:
        stats = self._stats()
        unavailable = [f"{s.root}: {s.unavailable}" for s in list(self._roots.values()) if s.unavailable]
        write_state(self.db, state=state, heartbeat_at=now(), device=self._device,
                    message="; ".join(f"root {u}" for u in unavailable) or None, **stats)  # fmt: skip
        from musiq_daemon.daemon import registry

        if self._watcher_id is not None:
            registry.beat(self.db, self._watcher_id, state=state, **stats)
        for worker, _thread, _stop in list(self._workers):
            mine = worker.stats()
            registry.beat(self.db, worker.owner, state="paused" if self._paused.is_set() else "running",
                          done=mine.done, failed=mine.failed, busy_s=mine.busy_s)  # fmt: skip
        if self._initial_scan_done and os.environ.get("NOTIFY_SOCKET"):
            from musiq_daemon.daemon.queue import queue_counts

            # Counting a big queue costs milliseconds: only for systemd's status line (`musiqd status`
            # counts for itself).
            counts = queue_counts(self.db)
            pending = counts["pending"] + counts["running"]
            rate = stats["done"] / stats["busy_s"] * 60 if stats["busy_s"] > 0 else 0.0
            sd_notify(f"STATUS={state}: {pending} queued, {stats['done']} scored, {rate:.1f} photos/min")

    def _stats(self) -> dict[str, Any]:
        done, failed, busy = self._retired["done"], self._retired["failed"], self._retired["busy_s"]
        for worker, _thread, _stop in self._workers:
            stats = worker.stats()
            done, failed, busy = done + stats.done, failed + stats.failed, busy + stats.busy_s
        return {"done": int(done), "failed": int(failed), "busy_s": float(busy)}

    # --- roots and watchers

    def _start_roots(self, *, cleanup: bool) -> None:
        """Watch every root; ``cleanup``: at process start, remove temporary files a killed musiqd left
        (never later: they may belong to a write in progress)."""
        mounts = MountTable.read()
        for root in self.config.roots:
            mount = mounts.mount_for(root)
            state = _RootState(root, mount.point if mount.point != "/" else None)
            self._roots[root] = state
            self._check_root(state, starting=True, cleanup=cleanup)

    def _check_roots(self) -> None:
        for state in list(self._roots.values()):
            try:
                self._check_root(state)
            except MusiqError as exc:
                log.error("root %s: %s", state.root, exc.message)

    def _check_root(self, state: _RootState, *, starting: bool = False, cleanup: bool = False) -> None:
        reason = self._root_problem(state)
        if reason is not None:
            if state.unavailable is None:
                log.warning("root %s unavailable: skipped (%s)", state.root, reason)
            state.unavailable = reason
            if state.watcher is not None:
                state.watcher.stop()
                state.watcher = None
            return
        back = state.unavailable is not None and not starting
        state.unavailable = None
        if cleanup:
            for temp in cleanup_stale_temps(state.root, recursive=True):
                log.info("removed a stale temporary file: %s", temp)
        # A root that comes back gets a new watcher even when the old one still runs: that one watched the
        # filesystem that went away (inotify), or kept the last state it saw (polling). Then a rescan
        # catches up with what changed meanwhile.
        dead = state.watcher is None or not state.watcher.alive()
        moved = None if state.watcher is None else filesystem_of(state.root, MountTable.read())
        if back:
            log.info("root %s is available again", state.root)
        elif state.watcher is not None and moved != state.watcher.filesystem:
            # A share mounted on the root after start (automount, nofail, a user's FUSE mount), or taken
            # away from under it: the old observer watches a filesystem that is no longer there.
            log.info(
                "root %s is now on %s (was %s): watching it anew", state.root, moved, state.watcher.filesystem
            )
        elif not dead:
            return
        elif state.watcher is not None:
            log.warning("the watcher of %s stopped; restarting it", state.root)
        self._start_watcher(state)
        if back or not starting:
            self._request_scan([state.root])

    def _start_watcher(self, state: _RootState) -> None:
        if state.watcher is not None:
            state.watcher.stop()
            state.watcher.join(2.0)
            state.watcher = None
        try:
            state.watcher = RootWatcher.start(
                state.root, setting=self.config.observer, poll_interval=self.config.poll_interval,
                path_filter=PathFilter.of(self.config), settler=self.settler,
            )  # fmt: skip
        except OSError as exc:
            # The rescans still find its photos; the next root check tries again.
            log.error("cannot watch %s: %s", state.root, exc.strerror or exc)
            return
        extra = f", every {self.config.poll_interval:g} s" if state.watcher.mode == "poll" else ""
        log.info("watching %s: %s (%s%s)", state.root, state.watcher.mode, state.watcher.reason, extra)

    def _restart_watchers(self) -> None:
        watchers = [s.watcher for s in self._roots.values() if s.watcher is not None]
        for watcher in watchers:
            watcher.stop()
        for watcher in watchers:
            watcher.join(2.0)
        self._roots.clear()
        self._start_roots(cleanup=False)
        self._request_scan(self.config.roots)

    # --- settler callbacks (settler thread)

    def _known(self, path: Path, info: os.stat_result) -> bool:
        with self.db.session() as session:
            return known_version(session, path, info, self.config.roots)

    def _on_ready(self, path: Path, content_hash: str | None) -> None:
        with self.db.session() as session:
            outcome = ingest_file(
                session, path, roots=self.config.roots, models=self.config.models, content_hash=content_hash
            )
        if outcome in ("queued", "moved"):
            log.info("%s: %s", "queued" if outcome == "queued" else "moved, score kept", path)
            self._nudge_workers()
        else:
            log.debug("%s: %s", outcome, path)

    def _on_gone(self, files: list[Path], folders: list[Path]) -> None:
        roots = self.config.roots
        reasons: dict[Path, str | None] = {}  # root -> why it is unreachable (None: reachable)

        def reachable(path: Path) -> bool:
            state = next((s for s in list(self._roots.values()) if path.is_relative_to(s.root)), None)
            if state is None:
                return False
            if state.root not in reasons:
                # Checked now, not at the last periodic check: a share that was just unmounted looks like
                # every photo deleted (polling reports exactly that).
                reasons[state.root] = self._root_problem(state)
                if reasons[state.root] is not None and state.unavailable is None:
                    state.unavailable = reasons[state.root]  # the main loop stops its watcher
                    log.warning("root %s unavailable: %s", state.root, reasons[state.root])
            # The root itself vanishing is an unavailable root, never a deletion.
            return reasons[state.root] is None and path != state.root

        gone_files = [f for f in files if reachable(f)]
        gone_folders = [f for f in folders if reachable(f)]
        with self.db.session() as session:
            count = mark_missing(session, gone_files, roots)
            for folder in gone_folders:
                count += mark_missing_under(session, folder, roots)
        if count:
            log.info("marked missing: %d photo%s gone", count, "s" if count != 1 else "")

    def _root_problem(self, state: _RootState) -> str | None:
        with self.db.session() as session:
            present = has_photos(session, state.root)
        return root_unavailable(state.root, has_photos=present, expected_mount=state.expected_mount)

    # --- culling (culler thread)

    def _culler(self) -> None:
        """Group new photos into bursts as they are scored (`musiqd cull` does the same for a whole library):
        every CULL_INTERVAL_S, the photos scored since, with their neighbours in time; then mark each
        burst's best photo with the best-of-burst keyword (and unmark a former best) by the write policy.
        A photo whose keyword cannot be written for a reason only the user can change is not retried until
        the next start."""
        from sqlalchemy import or_

        from musiq_daemon.best_of_burst import mark_best_photos
        from musiq_daemon.daemon.queue import under_condition
        from musiq_daemon.index.bursts import cull_new

        refused: set[int] = set()
        ours, ours_at, ours_roots = None, 0.0, self.config.roots
        while not self._stop.wait(CULL_INTERVAL_S):
            if self._paused.is_set() or self.config.in_quiet_hours(datetime.now().time()):
                continue
            try:
                # Only the photos under this daemon's roots: an index shared with other daemons, or with
                # `musiqd score` runs on other folders, holds photos that are not this daemon's to write.
                # (Worked out from the index's roots, again every ROOTS_REFRESH_S: that reads every photo.)
                roots = self.config.roots  # (a reload may change them)
                if ours is None or roots != ours_roots or time.monotonic() - ours_at > ROOTS_REFRESH_S:
                    ours = or_(*(under_condition(self.db, root) for root in roots))
                    ours_at, ours_roots = time.monotonic(), roots
                while not self._stop.is_set():
                    with self.db.session() as session:
                        read, bursts = cull_new(
                            session,
                            self.config.models[0],
                            gap_s=self.config.burst_gap,
                            max_distance=self.config.burst_distance,
                            where=ours,
                        )
                        found: list[tuple[int, str, str]] = []
                        for burst in bursts:
                            best = session.get(Photo, burst.best_photo_id) if burst.best_photo_id else None
                            where = "none yet"
                            if best is not None:
                                where = str(Path(decode_path(best.root)) / decode_path(best.rel_path))
                            found.append((burst.size, burst.camera or "unknown camera", where))
                    for size, camera, where in found:
                        log.info("burst of %d photos (%s); best: %s", size, camera, where)
                    if read == 0:
                        break
                settled = datetime.now(UTC) - timedelta(seconds=BURST_SETTLE_S)
                outcome = mark_best_photos(
                    self.db,
                    self.config.write,
                    where=ours,
                    skip=refused,
                    max_file_mb=self.config.max_file_mb,
                    settled_before=settled,
                )
                refused.update(outcome.refused)
            except Exception as exc:  # the index busy or a photo that cannot be read: the next round retries
                log.warning("grouping bursts: %s; trying again later", str(exc).splitlines()[0])

    # --- scanning (scanner thread)

    def _request_scan(self, roots: Sequence[Path]) -> None:
        with self._lock:
            self._scan_roots.update(roots)
        self._scan_request.set()

    def _scanner(self) -> None:
        next_full = time.monotonic()  # the initial scan
        while not self._stop.is_set():
            self._scan_request.wait(max(next_full - time.monotonic(), 0.0))
            self._scan_request.clear()
            if self._stop.is_set():
                return
            with self._lock:
                requested = set(self._scan_roots)
                self._scan_roots.clear()
            full = time.monotonic() >= next_full
            roots = [root for root in self.config.roots if full or root in requested]
            self._scanning = True
            failed = False
            try:
                for root in roots:
                    if self._stop.is_set():
                        return
                    self._scan_one(root)
            except Exception:
                log.exception("scan failed; retrying in %g s", SCAN_RETRY_S)
                failed = True
            finally:
                self._scanning = False
            if full or failed:
                next_full = time.monotonic() + (SCAN_RETRY_S if failed else self.config.rescan_interval)
            if not self._initial_scan_done and not self._stop.is_set():
                self._initial_scan_done = True
                sd_notify("READY=1\nSTATUS=initial scan done")
                log.info("initial scan done")
                self._wake.set()

    def _scan_one(self, root: Path) -> None:
        state = self._roots.get(root)
        if state is not None and state.unavailable is not None:
            log.warning("root %s unavailable: skipped (%s)", root, state.unavailable)
            return
        with ScanProgressDisplay(root, initial=not self._initial_scan_done) as show:

            def progress(at: ScanProgress) -> None:
                show(at)
                self._nudge_workers()  # the photos queued so far

            result = scan_root(
                self.db, root, self.config, progress=progress, defer=self._defer, stop=self._stop,
                expected_mount=state.expected_mount if state is not None else None,
            )  # fmt: skip
        self._nudge_workers()
        if result.unavailable is not None:
            log.warning("%s", result.summary())
            if state is not None and state.unavailable is None:
                state.unavailable = result.unavailable
        else:
            log.info("%s", result.summary())

    def _defer(self, path: Path) -> None:
        self.settler.touch(str(path), "scanned")

    # --- workers

    def _make_workers(self) -> list[Worker]:
        """Workers with their models loaded (here, in the main thread: a missing model stops the start-up
        with its own message and exit code)."""
        from musiq_daemon.daemon.worker import Worker
        from musiq_daemon.pipeline import build_scorers

        config = self.config
        workers = []
        for _ in range(config.workers):
            scorers = build_scorers(config)  # per worker: an engine is not shared between threads
            self._device = next(iter(scorers.values())).device
            workers.append(
                Worker(self.db, scorers, write_policy=config.write, retries=config.retries,
                       backoff=config.retry_backoff, poll_interval=WORKER_POLL_S)
            )  # fmt: skip
        return workers

    def _start_workers(self, workers: list[Worker]) -> None:
        from musiq_daemon.daemon import registry

        for number, worker in enumerate(workers, 1):
            who = registry.Registration(
                worker.owner, "daemon", self._device, ",".join(self.config.models), None
            )
            registry.register(self.db, who)
            stop = _WorkerSignal()
            thread = threading.Thread(
                target=self._run_worker, args=(worker, stop), name=f"musiqd-worker-{number}", daemon=True
            )
            self._workers.append((worker, thread, stop))
            thread.start()
        log.info("%d worker%s: %s on %s", len(workers), "s" if len(workers) != 1 else "",
                 ", ".join(self.config.models), self._device)  # fmt: skip

    def _nudge_workers(self) -> None:
        for _worker, _thread, signal_ in list(self._workers):  # called from the settler and scan threads
            signal_.nudge()

    def _run_worker(self, worker: Worker, stop: threading.Event) -> None:
        try:
            # Quiet hours are decided here (the main loop sets _paused), so that a reload changes them.
            worker.run(stop, self._paused.is_set)
        except Exception:
            log.exception("worker crashed; stopping")
            self._stop.set()
            self._wake.set()

    def _stop_workers(self) -> None:
        for _worker, _thread, stop in self._workers:
            stop.set()
        from musiq_daemon.daemon import registry

        for worker, thread, _stop in self._workers:
            thread.join(STOP_GRACE_S)
            stats = worker.stats()
            with contextlib.suppress(Exception):  # the index gone: the row ages out by itself
                registry.beat(self.db, worker.owner, state="stopped", done=stats.done, failed=stats.failed,
                              busy_s=stats.busy_s)  # fmt: skip
            self._retired["done"] += stats.done
            self._retired["failed"] += stats.failed
            self._retired["busy_s"] += stats.busy_s
        self._workers.clear()

    # --- reload

    def _reload(self) -> None:
        if self._reload_config is None:
            log.info("SIGHUP: no configuration source to reload")
            return
        try:
            new = self._checked(self._reload_config())
        except MusiqError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc.message)
            return
        old = self.config
        changed = [f.name for f in dataclasses.fields(new) if getattr(old, f.name) != getattr(new, f.name)]
        if not changed:
            log.info("SIGHUP: configuration unchanged")
            return
        if "roots" in changed and self._locks is not None:
            try:
                self._locks.update(new.roots)
            except MusiqError as exc:
                log.error("configuration not reloaded, keeping the running one: %s", exc.message)
                return
        for name in changed:
            if name == "database":
                log.info("config: database changed (applies after a restart)")
            else:
                log.info("config: %s: %s -> %s%s", name, _show(getattr(old, name)), _show(getattr(new, name)),
                         " (applies after a restart)" if name in _RESTART_FIELDS else "")  # fmt: skip
        self.config = dataclasses.replace(new, **{name: getattr(old, name) for name in _RESTART_FIELDS})
        self.settler.configure(quiet_period=self.config.quiet_period, max_wait=self.config.max_wait)
        if any(name in _WORKER_FIELDS for name in changed):
            try:
                workers = self._make_workers()
            except MusiqError as exc:
                log.error("workers not restarted, the running ones go on: %s", exc.message)
            else:
                self._stop_workers()
                self._start_workers(workers)
        if any(name in _WATCH_FIELDS for name in changed):
            self._restart_watchers()
        write_state(self.db, roots=_roots_json(self.config.roots), models=",".join(self.config.models))


def _roots_json(roots: Sequence[Path]) -> str:
    return json.dumps([encode_path(root) for root in roots])


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def run_service(config: Config, *, reload: Callable[[], Config] | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; returns the exit code. ``reload`` gives the
    configuration anew on SIGHUP (the roots of ``config`` are watched: command-line roots belong in it)."""
    return Service(config, reload=reload).run()


__all__ = ["Service", "run_service"]
