"""``musiqd worker``: scoring processes that take jobs from the shared queue and watch nothing.

A worker runs the daemon's pipeline (decode, infer, write, record) on jobs that the daemon's watcher and
scans queued, on the daemon's machine (more processes on more cores) or on any other machine that can
open the index (PostgreSQL) and reach the photos (a share, with ``--path-map`` when it is mounted
elsewhere). Its claims are leases renewed while it works: a worker that dies loses its jobs to the others
within a lease (``queue.LEASE_S``), at once when it ran on the same machine. ``musiqd pause`` pauses it
like the daemon, ``musiqd status`` lists it, SIGTERM or Ctrl-C stops it after the photo in flight.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Final

from musiq_daemon.config import Config
from musiq_daemon.daemon import registry
from musiq_daemon.daemon.state import read_state
from musiq_daemon.daemon.systemd import sd_notify, watchdog_interval
from musiq_daemon.daemon.worker import Worker
from musiq_daemon.index.db import open_index
from musiq_daemon.paths import PathMap
from musiq_daemon.pipeline import build_scorers

log = logging.getLogger("musiqd.worker")

#: Seconds between the registry's heartbeats (musiqd status shows them).
BEAT_S: Final = 5.0
#: Seconds an idle worker waits before it looks at the queue again.
IDLE_POLL_S: Final = 2.0


def run_workers(config: Config, files: PathMap) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit code."""
    db = open_index(config.database)
    stop = threading.Event()
    paused = threading.Event()
    workers = []
    for _ in range(config.workers):
        scorers = build_scorers(config)  # per worker: an engine is not shared between threads
        workers.append(
            Worker(db, scorers, write_policy=config.write, retries=config.retries,
                   backoff=config.retry_backoff, poll_interval=IDLE_POLL_S, files=files)
        )  # fmt: skip
    device = next(iter(workers[0].scorers.values())).device
    for worker in workers:
        registry.register(
            db,
            registry.Registration(
                worker.owner, "worker", device, ",".join(config.models), files.describe() or None
            ),
        )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping (%s)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [
        threading.Thread(
            target=worker.run, args=(stop, paused.is_set), name=f"musiqd-worker-{n}", daemon=True
        )
        for n, worker in enumerate(workers, 1)
    ]
    for thread in threads:
        thread.start()
    sd_notify("READY=1")
    where = f", paths mapped {files.describe()}" if files else ""
    log.info("%d worker%s: %s on %s%s", len(workers), "s" if len(workers) != 1 else "",
             ", ".join(config.models), device, where)  # fmt: skip
    ping = watchdog_interval()
    try:
        while not stop.is_set():
            if ping:
                sd_notify("WATCHDOG=1")
            try:
                row = read_state(db)
                if row is not None and row.paused:
                    if not paused.is_set():
                        log.info("scoring paused (musiqd pause)")
                    paused.set()
                elif paused.is_set():
                    log.info("scoring resumed")
                    paused.clear()
                for worker in workers:
                    stats = worker.stats()
                    registry.beat(db, worker.owner, state="paused" if paused.is_set() else "running",
                                  done=stats.done, failed=stats.failed, busy_s=stats.busy_s)  # fmt: skip
            except Exception as exc:  # the database briefly unreachable: the workers go on, so does this
                log.warning("heartbeat: %s; retrying", str(exc).splitlines()[0])
            stop.wait(min(BEAT_S, ping) if ping else BEAT_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30.0)
        for worker in workers:
            stats = worker.stats()
            try:
                registry.beat(db, worker.owner, state="stopped", done=stats.done, failed=stats.failed,
                              busy_s=stats.busy_s)  # fmt: skip
            except Exception as exc:
                log.warning("cannot record the stop: %s", str(exc).splitlines()[0])
        db.close()
    sd_notify("STOPPING=1")
    log.info("stopped")
    return 0
