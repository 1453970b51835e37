"""The scoring worker: takes jobs from the queue, scores each photo with the job's model, writes the score
into the photo's metadata and records everything in the index.

>>> worker = Worker(db, {"koniq": Scorer("koniq")}, write_policy=WritePolicy())
>>> worker.run(stop_event, paused=lambda: False)   # until stop_event is set

One job, in order:

1. The file must still be the version the index recorded when the job was claimed (size and modification
   time). A file that changed since (still being copied, or edited) is recorded as it is now and looked at
   again after :data:`SETTLE_DELAY_S`; that attempt does not count. A missing file is a failure like any
   other (retried: another program's atomic save takes the name away for a moment), unless its root is
   missing or empty: an unmounted share is not a deletion, so every pending job of that root waits
   :data:`UNAVAILABLE_DELAY_S` instead.
2. Decode, then inference. In :meth:`Worker.run` the next photo is decoded while the current one runs
   through the model.
3. The file is checked again (it must not have changed during scoring), then the score is written with
   :func:`~musiq_daemon.metadata.writer.write_score` by the write policy.
4. One transaction: the photo's row (new size and modification time after an embedded write, content
   hash, format, dimensions, capture time), the score, every file musiqd wrote (so the watcher ignores
   their change events), and the job marked done. A crash before the commit leaves the job to be run
   again, never a half-recorded one.

Errors (decisions):

* Decoding or inference fails (any :class:`~musiq_daemon.errors.MusiqError`): the attempt fails and is
  retried with backoff, then the job is failed with the one-line reason (see
  :mod:`musiq_daemon.daemon.queue`). A failed inference never marks a job done.
* The metadata write is refused for a reason only the user can change: the file or its folder is
  read-only (:class:`~musiq_daemon.errors.ReadOnlyError`) or its metadata cannot be parsed
  (:class:`~musiq_daemon.errors.DecodeError` from the writer). The score is still recorded in the index
  (the catalogue that ``musiqd query`` reads) and the job is done, with ``score not written: <reason>`` as
  its last error, which ``musiqd status`` and ``musiqd query`` show. Retrying could not help; after
  fixing the permissions, ``musiqd rescore --all`` writes the scores; ``index-only`` mode avoids the note.
* Another program wrote the file while musiqd did (:class:`~musiq_daemon.errors.FileChangedError`), the
  disk is full, or the write failed otherwise: the attempt fails and is retried; nothing is recorded,
  since the next attempt scores the file as it is then.
* Any other exception is a bug or an environment problem (the database went away): its traceback is
  logged, the attempt fails as ``internal error: ...`` (retried like any failure) and the worker goes on.
* The process dies (kill -9, out of memory, power cut): the jobs it had in flight are pending again at the
  next start, their attempt not counted, each with one more interruption (see
  :mod:`musiq_daemon.daemon.queue`). A photo interrupted before is scored alone: nothing is claimed or
  decoded ahead while it is in flight, so a further kill is charged to it and to no neighbour. A photo
  interrupted more than ``retries`` times, the last time alone, is failed at the restart, before it is
  claimed again, rather than crash-looping the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time as clock_time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from musiq_daemon.api import Scorer
from musiq_daemon.config import in_quiet_hours
from musiq_daemon.daemon import queue
from musiq_daemon.daemon.queue import ClaimedJob
from musiq_daemon.errors import DecodeError, MusiqError, OutsideRootError, ReadOnlyError
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.records import last_rating_written, record_results, upsert_photo
from musiq_daemon.metadata.writer import WritePolicy, WriteResult, write_scores
from musiq_daemon.paths import SAME_PATHS, PathMap, check_inside
from musiq_daemon.pipeline import Decoded, Pipeline
from musiq_daemon.records import ScoreRecord

log = logging.getLogger(__name__)

#: Seconds before a file that changed since it was queued is looked at again.
SETTLE_DELAY_S: Final = 30.0
#: Seconds the jobs of an unreachable root (unmounted share) wait before the next try.
UNAVAILABLE_DELAY_S: Final = 300.0
#: Seconds the worker waits after an error outside any one job (e.g. the database is unreachable).
ERROR_PAUSE_S: Final = 10.0

Outcome = Literal["done", "retry", "failed", "deferred"]


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job: ``done``; ``retry`` (failed, will be tried again); ``failed`` (for good);
    ``deferred`` (the file changed or is unreachable: back in the queue, no attempt counted)."""

    job_id: int
    path: Path
    model_id: str
    result: Outcome
    score: float | None = None
    message: str | None = None  # the error, why it was deferred, or the note on a done job


@dataclass(frozen=True)
class WorkerStats:
    """Throughput since the worker was created (for ``musiqd status``)."""

    done: int = 0  # jobs completed (photo scored for one model)
    failed: int = 0  # jobs failed for good
    busy_s: float = 0.0  # seconds with a job in hand (decoding, scoring, writing, recording)


@dataclass(frozen=True)
class _Deferral:
    reason: str
    delay: float
    root_unavailable: bool = False


if TYPE_CHECKING:
    #: Claimed jobs with their decode (done or under way), oldest first.
    _Claimed = deque[tuple[list[ClaimedJob], Future[Decoded | _Deferral | Exception]]]


class _ChangedWhileScoringError(Exception):
    """The file changed between scoring and recording: roll back, score it again later."""


def _local_now() -> datetime:
    return datetime.now().astimezone()


def _never() -> bool:
    return False


def _root_available(root: Path) -> bool:
    """A root that is gone, or empty, is most likely a share that is not mounted right now."""
    try:
        with os.scandir(root) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _suspect(group: list[ClaimedJob]) -> bool:
    """Whether the process died before while this photo was in flight (then it is scored alone)."""
    return any(job.interrupted for job in group)


class Worker:
    """Scores queued jobs, one at a time, with one loaded :class:`~musiq_daemon.api.Scorer` per model.

    ``scorers`` maps model ids to their scorer (loaded once); jobs of other models stay queued. Not
    thread-safe: run one worker per thread, each with its own scorers. ``clock`` gives the aware local
    time (quiet hours are local); tests pass a fake one.
    """

    def __init__(
        self,
        db: IndexDB,
        scorers: Mapping[str, Scorer],
        *,
        write_policy: WritePolicy,
        retries: int = 3,
        backoff: float = 60.0,
        quiet_hours: tuple[time, time] | None = None,
        poll_interval: float = 5.0,
        clock: Callable[[], datetime] = _local_now,
        owner: str | None = None,
        files: PathMap = SAME_PATHS,
    ) -> None:
        self.db = db
        self.owner = owner or queue.owner_id()  # the lease owner of every job this worker claims
        self.files = files  # where this machine sees the index's paths (musiqd worker --path-map)
        self.scorers = dict(scorers)
        # Decoding and inference are the pipeline's; the queue, the write and the record are the worker's
        # (the jobs complete in the same transaction as the scores).
        self.pipeline = Pipeline(self.scorers, force=True)
        self.write_policy = write_policy
        self.retries = retries
        self.backoff = backoff
        self.quiet_hours = quiet_hours
        self.poll_interval = poll_interval
        self.clock = clock
        self._stats = WorkerStats()
        self._stats_lock = threading.Lock()

    def stats(self) -> WorkerStats:
        with self._stats_lock:
            return self._stats

    def run_once(self) -> JobOutcome | None:
        """Claim and process one due photo (every due job of it, for this worker's models; quiet hours and
        pause do not apply); the outcome of its first job, None when none is due."""
        group = self._claim()
        if not group:
            return None
        started = clock_time.monotonic()
        try:
            return self._process(group, self._prepare(group))[0]
        finally:
            self._count(busy_s=clock_time.monotonic() - started)

    def run(self, stop: threading.Event, paused: Callable[[], bool] = _never) -> None:
        """Process jobs until ``stop`` is set; claim none while ``paused()`` or in quiet hours.

        The next job is claimed and decoded in a background thread while the current one is scored. On
        stop (and on pause or quiet hours) the photo being scored is finished (seconds), and a claimed photo
        not yet scored is given back to the queue unchanged, so no job is left ``running``.
        """
        claimed: _Claimed = deque()
        finished = threading.Event()
        beats = threading.Thread(target=self._beat, args=(stop, finished), name="musiqd-lease", daemon=True)
        beats.start()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="musiqd-decode") as pool:
            try:
                while not stop.is_set():
                    try:
                        if claimed and not self._may_claim(paused):
                            self._give_back(claimed)  # paused meanwhile: not even the photo decoded ahead
                        if not claimed and not self._claim_into(claimed, pool, paused):
                            stop.wait(self.poll_interval)
                            continue
                        started = clock_time.monotonic()
                        group, future = claimed[0]
                        prepared = future.result()
                        if stop.is_set():
                            break
                        if not _suspect(group):  # a suspect is scored alone: nothing decoded next to it
                            self._claim_into(claimed, pool, paused, suspects=False)
                        self._process(group, prepared)
                        claimed.popleft()
                        self._count(busy_s=clock_time.monotonic() - started)
                    except Exception:
                        log.exception("worker error; going on in %g s", ERROR_PAUSE_S)
                        self._give_back(claimed)
                        stop.wait(ERROR_PAUSE_S)
            finally:
                self._give_back(claimed)
                finished.set()
                beats.join(5.0)

    # --- one job -------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC)

    def _may_claim(self, paused: Callable[[], bool]) -> bool:
        return not paused() and not in_quiet_hours(self.clock().time(), self.quiet_hours)

    def _claim(self, *, suspects: bool = True) -> list[ClaimedJob]:
        return queue.claim_photo(
            self.db, model_ids=list(self.scorers), suspects=suspects, owner=self.owner, now=self._now()
        )

    def _beat(self, stop: threading.Event, finished: threading.Event) -> None:
        """:meth:`heartbeat` every LEASE_S / 4 while :meth:`run` runs (a slow photo never loses its lease)."""
        while not (finished.wait(queue.LEASE_S / 4) or stop.is_set()):
            try:
                self.heartbeat()
            except Exception as exc:  # the database briefly unreachable: the next beat tries again
                log.warning("lease renewal failed: %s; retrying", str(exc).splitlines()[0])

    def heartbeat(self) -> None:
        """Renew the leases of the jobs in flight, and take back jobs whose owner is gone (another worker
        killed, its machine lost): call every few seconds, from any thread (see :meth:`run`)."""
        queue.renew_leases(self.db, self.owner, now=self._now())
        stale = queue.requeue_stale(self.db, retries=self.retries, now=self._now())
        if stale.requeued:
            log.info("took back %d photos from a worker that is gone", stale.requeued)
        for path, message in stale.given_up:
            log.warning("%s failed: %s", path, message)

    def _claim_into(
        self,
        claimed: _Claimed,
        pool: ThreadPoolExecutor,
        paused: Callable[[], bool],
        *,
        suspects: bool = True,
    ) -> bool:
        if not self._may_claim(paused):
            return False
        group = self._claim(suspects=suspects)
        if not group:
            return False
        claimed.append((group, pool.submit(self._prepare, group)))
        return True

    def _give_back(self, claimed: _Claimed) -> None:
        """Return claimed jobs that were not processed to the queue (best effort: what cannot be returned
        now is returned by :func:`~musiq_daemon.daemon.queue.requeue_stale` at the next start)."""
        while claimed:
            group, future = claimed.popleft()
            if not future.cancel():
                future.exception()  # a decode in progress ends before its jobs are given back
            for job in group:
                try:
                    queue.release(self.db, job.job_id, now=self._now())
                except Exception:
                    log.exception("cannot give job %d back to the queue", job.job_id)

    def _check_file(self, job: ClaimedJob) -> _Deferral | MusiqError | None:
        try:
            local, local_root = self.files.local(job.path), self.files.local(job.root)
            check_inside(local, local_root)
            info = local.stat()
        except FileNotFoundError:
            if not _root_available(local_root):
                return _Deferral(
                    f"{local_root} is missing or empty (not mounted?)", UNAVAILABLE_DELAY_S, True
                )
            return DecodeError(f"{job.path}: file not found (moved or deleted before it was scored)")
        except OSError as exc:
            return DecodeError(f"{job.path}: cannot read the file: {exc.strerror or exc}")
        except OutsideRootError as exc:
            return exc
        if (info.st_size, info.st_mtime_ns) != (job.size, job.mtime_ns):
            return _Deferral("the file changed since it was queued", SETTLE_DELAY_S)
        return None

    def _prepare(self, group: list[ClaimedJob]) -> Decoded | _Deferral | Exception:
        """Check and decode once for every job of the photo (in the decode thread: errors are returned,
        and raised by :meth:`_process`)."""
        job = group[0]
        try:
            problem = self._check_file(job)
            if problem is not None:
                return problem
            return self.pipeline.prepare(self.files.local(job.path), [j.model_id for j in group])
        except Exception as exc:
            return exc

    def _process(
        self, group: list[ClaimedJob], prepared: Decoded | _Deferral | Exception
    ) -> list[JobOutcome]:
        job = group[0]
        try:
            if isinstance(prepared, _Deferral):
                return self._defer(group, prepared)
            if isinstance(prepared, Exception):
                raise prepared
            records = self.pipeline.infer(prepared)
            problem = self._check_file(job)
            if isinstance(problem, _Deferral):
                return self._defer(group, replace(problem, reason="the file changed while it was scored"))
            if problem is not None:
                raise problem
            written, note = self._write(job, records)
            return self._record(group, records, written, note)
        except _ChangedWhileScoringError:
            return self._defer(group, _Deferral("the file changed while it was scored", SETTLE_DELAY_S))
        except OutsideRootError as exc:  # retrying cannot help until the links change
            return self._fail(group, str(exc), permanent=True)
        except MusiqError as exc:
            return self._fail(group, str(exc))
        except Exception as exc:
            log.exception("internal error while scoring %s", job.path)
            return self._fail(group, f"internal error: {type(exc).__name__}: {exc}")

    def _write(
        self, job: ClaimedJob, records: tuple[ScoreRecord, ...]
    ) -> tuple[WriteResult | None, str | None]:
        try:
            known = None
            if self.write_policy.rating_model is not None:
                with self.db.session() as session:
                    model = self.write_policy.rating_model
                    known = last_rating_written(session, job.path, model, roots=[job.root])
            limits = next(iter(self.scorers.values())).max_file_mb  # one configuration built them all
            written = write_scores(
                self.files.local(job.path), records, self.write_policy, known_rating=known, max_file_mb=limits
            )
            for line in written.notes:
                log.warning("%s", line)
            return written, "; ".join(written.notes) or None
        except (ReadOnlyError, DecodeError) as exc:
            log.warning("score of %s recorded in the index only: %s", job.path, exc)
            return None, f"score not written: {exc}"

    def _record(
        self,
        group: list[ClaimedJob],
        records: tuple[ScoreRecord, ...],
        written: WriteResult | None,
        note: str | None,
    ) -> list[JobOutcome]:
        job = group[0]
        # After an embedded write the photo is the new version musiqd wrote; otherwise the one scored.
        if written is not None and written.target == "embedded" and written.signature is not None:
            expected = (written.signature.size, written.signature.mtime_ns)
        else:
            expected = (job.size, job.mtime_ns)
        with self.db.session() as session:
            # Checked inside the same transaction: raising rolls the recording back.
            photo = record_results(session, job.path, records, written, roots=[job.root], files=self.files)
            if photo.id != job.photo_id:
                raise RuntimeError(f"{job.path} maps to photo {photo.id}, the job to {job.photo_id}")
            if (photo.size, photo.mtime_ns) != expected:
                raise _ChangedWhileScoringError
            for claimed in group:
                if not queue.complete(session, claimed.job_id, note=note, now=self._now()):
                    raise RuntimeError(f"job {claimed.job_id} was taken away while it was being scored")
        self._count(done=len(group))
        scores = ", ".join(f"{r.model_id} {r.score:.3f}" for r in records)
        log.info("scored %s: %s", job.path, scores)
        by_model = {r.model_id: r.score for r in records}
        return [
            JobOutcome(j.job_id, j.path, j.model_id, "done", by_model.get(j.model_id), note) for j in group
        ]

    def _defer(self, group: list[ClaimedJob], deferral: _Deferral) -> list[JobOutcome]:
        job = group[0]
        with self.db.session() as session:
            if deferral.root_unavailable:
                queue.postpone_root(session, job.root, delay=deferral.delay, now=self._now())
            else:
                # Record the file as it is now: when it is unchanged at the next try, it is scored.
                with contextlib.suppress(OSError):  # gone meanwhile: the next try finds out
                    upsert_photo(session, job.path, roots=[job.root], files=self.files)
            for claimed in group:
                queue.release(session, claimed.job_id, delay=deferral.delay, now=self._now())
        log.info("%s: %s; trying again in %g s", job.path, deferral.reason, deferral.delay)
        return [JobOutcome(j.job_id, j.path, j.model_id, "deferred", message=deferral.reason) for j in group]

    def _fail(self, group: list[ClaimedJob], message: str, *, permanent: bool = False) -> list[JobOutcome]:
        outcomes = []
        for job in group:
            state = queue.fail(
                self.db,
                job.job_id,
                message,
                retries=self.retries,
                backoff=self.backoff,
                permanent=permanent,
                now=self._now(),
            )
            if state == "failed":
                self._count(failed=1)
                log.warning("%s (%s) failed: %s", job.path, job.model_id, message)
                outcomes.append(JobOutcome(job.job_id, job.path, job.model_id, "failed", message=message))
            else:
                log.info(
                    "%s (%s) attempt %d failed, will retry: %s", job.path, job.model_id, job.attempts, message
                )
                outcomes.append(JobOutcome(job.job_id, job.path, job.model_id, "retry", message=message))
        return outcomes

    def _count(self, *, done: int = 0, failed: int = 0, busy_s: float = 0.0) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = WorkerStats(s.done + done, s.failed + failed, s.busy_s + busy_s)
