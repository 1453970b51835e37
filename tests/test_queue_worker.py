"""The job queue and the scoring worker: real index files (and PostgreSQL when MUSIQD_TEST_DATABASE_URL is
set), real photos, the real tiny model, real processes for concurrency and kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import exiv2
import imagegen
import pytest
from sqlalchemy import select

from musiq_daemon.api import Scorer
from musiq_daemon.config import Config, in_quiet_hours
from musiq_daemon.daemon import queue
from musiq_daemon.daemon.scan import ingest_file
from musiq_daemon.daemon.worker import SETTLE_DELAY_S, UNAVAILABLE_DELAY_S, Worker
from musiq_daemon.index import IndexDB, open_index
from musiq_daemon.index.models import Job, Photo, Score, WrittenFile
from musiq_daemon.index.paths import encode_path
from musiq_daemon.index.records import upsert_photo
from musiq_daemon.metadata import xmp as ours
from musiq_daemon.metadata.content_hash import content_hash_file
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.metadata.writer import WritePolicy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(db_url: str) -> Iterator[IndexDB]:
    index = open_index(db_url)
    yield index
    index.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[IndexDB]:
    index = open_index(str(tmp_path / "index.sqlite3"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def scorers(models_root: Path) -> dict[str, Scorer]:
    return {"koniq": Scorer("koniq", "fp32", device="cpu", models_root=models_root)}


def add_photos(db: IndexDB, root: Path, names: list[str], *, image: bool = False) -> list[int]:
    """Files under ``root`` recorded in the index (as the watcher does) and queued for koniq."""
    ids = []
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if image:
            imagegen.make_jpeg(path, 160, 120, seed=100 + i)
        else:
            path.write_bytes(b"photo %d" % i)
        with db.session() as session:
            photo = upsert_photo(session, path, roots=[root])
            queue.enqueue(session, photo.id, "koniq")
            ids.append(photo.id)
    return ids


def jobs(db: IndexDB) -> dict[int, Job]:
    """Every job by photo id (detached copies)."""
    with db.session() as session:
        return {job.photo_id: job for job in session.scalars(select(Job))}


def make_worker(db: IndexDB, scorers: dict[str, Scorer], **kwargs: Any) -> Worker:
    options: dict[str, Any] = {"write_policy": WritePolicy(), "retries": 2, "backoff": 0.0}
    return Worker(db, scorers, **(options | kwargs))


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def xmp_fields(path: Path) -> dict[str, str]:
    ours.register_namespace()
    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    return ours.read_model_fields(image.xmpData(), "koniq")


# --- the queue ---------------------------------------------------------------------------------------------


def test_enqueue_claim_complete(db: IndexDB, tmp_path: Path) -> None:
    root = tmp_path / "Photos"
    (photo_id,) = add_photos(db, root, ["a.jpg"])
    with db.session() as session:
        assert not queue.enqueue(session, photo_id, "koniq")  # pending already
        assert queue.enqueue(session, photo_id, "ava")
    assert queue.queue_counts(db) == {"pending": 2, "running": 0, "done": 0, "failed": 0}

    job = queue.claim(db, model_ids=["koniq"])
    assert job is not None and queue.claim(db, model_ids=["koniq"]) is None
    assert (job.photo_id, job.model_id, job.attempts) == (photo_id, "koniq", 1)
    assert job.path == root / "a.jpg" and job.root == root
    info = (root / "a.jpg").stat()
    assert (job.size, job.mtime_ns) == (info.st_size, info.st_mtime_ns)
    assert not queue.enqueue(db, photo_id, "koniq", force=True)  # running: its worker finishes it
    assert queue.complete(db, job.job_id)
    assert not queue.complete(db, job.job_id)  # only a running job completes
    assert queue.queue_counts(db) == {"pending": 1, "running": 0, "done": 1, "failed": 0}

    # Done for this version of the file: a rescan that enqueues everything changes nothing.
    assert not queue.enqueue(db, photo_id, "koniq")
    # The file is written again: its recorded modification time is later than the job's end.
    later = time.time_ns() + 5_000_000_000
    os.utime(root / "a.jpg", ns=(later, later))
    with db.session() as session:
        upsert_photo(session, root / "a.jpg", roots=[root])
        assert queue.enqueue(session, photo_id, "koniq")
    again = queue.claim(db, model_ids=["koniq"])
    assert again is not None and again.job_id == job.job_id and again.attempts == 1
    assert queue.complete(db, again.job_id, now=datetime.now(UTC) + timedelta(seconds=10))
    assert not queue.enqueue(db, photo_id, "koniq")
    assert queue.enqueue(db, photo_id, "koniq", force=True)  # what `rescore --all` does


def test_claim_order_due_time_and_models(db: IndexDB, tmp_path: Path) -> None:
    a, b, c = add_photos(db, tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    now = datetime.now(UTC)
    first = queue.claim(db, now=now)
    assert first is not None and first.photo_id == a
    assert queue.fail(db, first.job_id, "boom", retries=3, backoff=60, now=now) == "pending"
    # The retry waits; fresh jobs go first, in queue order.
    claimed = [queue.claim(db, now=now + timedelta(seconds=30)) for _ in range(3)]
    assert [j.photo_id if j else None for j in claimed] == [b, c, None]
    retry = queue.claim(db, now=now + timedelta(seconds=60))
    assert retry is not None and retry.photo_id == a and retry.attempts == 2
    with db.session() as session:
        queue.enqueue(session, a, "ava")
    assert queue.claim(db, model_ids=["koniq"]) is None
    other = queue.claim(db, model_ids=["ava", "koniq"])
    assert other is not None and other.model_id == "ava"


CLAIMER = """
import sys, time
from pathlib import Path
from musiq_daemon.index import open_index
from musiq_daemon.daemon.queue import claim, complete
db = open_index(sys.argv[1])
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
ids = []
while (job := claim(db)) is not None:
    ids.append(job.job_id)
    complete(db, job.job_id)
print(" ".join(map(str, ids)), flush=True)
"""


def test_two_processes_never_claim_the_same_job(db: IndexDB, tmp_path: Path) -> None:
    photo_ids = add_photos(db, tmp_path / "Photos", [f"{i:03}.jpg" for i in range(150)])
    with db.session() as session:
        for photo_id in photo_ids:  # a second model: 300 jobs
            queue.enqueue(session, photo_id, "ava")
    every = set(queue_ids(db, "koniq")) | set(queue_ids(db, "ava"))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, db.url, str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    claimed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        claimed.append([int(x) for x in out.split()])
    first, second = (set(ids) for ids in claimed)
    assert len(first) == len(claimed[0]) and len(second) == len(claimed[1])
    assert not first & second
    assert first | second == every and len(every) == 300
    assert queue.queue_counts(db)["done"] == 300


def queue_ids(db: IndexDB, model_id: str) -> list[int]:
    with db.session() as session:
        return list(session.scalars(select(Job.id).where(Job.model_id == model_id)))


def test_fail_backs_off_then_fails_with_the_reason(db: IndexDB, tmp_path: Path) -> None:
    add_photos(db, tmp_path, ["a.jpg", "b.jpg"])
    now = datetime.now(UTC)
    waits = []
    for attempt in (1, 2, 3):
        job = queue.claim(db, model_ids=["koniq"], now=now)
        assert job is not None and job.attempts == attempt and job.path.name == "a.jpg"
        state = queue.fail(db, job.job_id, f"bad\nthing {attempt}", retries=2, backoff=10, now=now)
        assert state == ("pending" if attempt < 3 else "failed")
        row = jobs(db)[job.photo_id]
        if state == "pending":
            assert row.next_attempt_at is not None
            waits.append((row.next_attempt_at - now).total_seconds())
            if attempt == 1:
                other = queue.claim(db, model_ids=["koniq"], now=now)  # b.jpg meanwhile...
                assert other is not None and other.path.name == "b.jpg"
                assert queue.release(db, other.job_id, delay=3600, now=now)  # ...given back for later
            now = row.next_attempt_at
    assert waits == [10, 20]
    failed = jobs(db)[job.photo_id]
    assert failed.state == "failed" and failed.last_error == "bad thing 3" and failed.next_attempt_at is None
    assert jobs(db)[job.photo_id + 1].attempts == 0  # released: no attempt counted
    assert queue.fail(db, job.job_id, "again", retries=2, backoff=10) is None  # not running
    (report,) = queue.recent_failures(db)
    assert (report.path, report.model_id, report.state) == (tmp_path / "a.jpg", "koniq", "failed")
    assert (report.error, report.attempts) == ("bad thing 3", 3)
    # A failed job is not retried by a rescan of the same file version; forcing does.
    assert not queue.enqueue(db, job.photo_id, "koniq")
    assert queue.enqueue(db, job.photo_id, "koniq", force=True)
    job = queue.claim(db, model_ids=["koniq"])
    assert job is not None and job.attempts == 1
    assert queue.fail(db, job.job_id, "no", retries=5, backoff=1, permanent=True) == "failed"


KILLED = """
import os, signal, sys
from musiq_daemon.index import open_index
from musiq_daemon.daemon.queue import claim
job = claim(open_index(sys.argv[1]))
print(job.job_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_requeue_stale_after_kill_9(db: IndexDB, tmp_path: Path) -> None:
    add_photos(db, tmp_path, ["a.jpg", "b.jpg"])
    done = subprocess.run(
        [sys.executable, "-c", KILLED, db.url], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    job_id = int(done.stdout)
    assert queue.queue_counts(db)["running"] == 1
    assert queue.requeue_stale(db).requeued == 1
    row = next(j for j in jobs(db).values() if j.id == job_id)
    # The kill is not counted as an attempt but as an interruption: the job is a suspect now.
    assert (row.state, row.attempts, row.interrupted) == ("pending", 0, 1)
    assert queue.claim(db, suspects=False) is not None  # the other photo, never interrupted
    again = queue.claim(db)
    assert again is not None and again.job_id == job_id and again.interrupted == 1
    assert queue.claim(db) is None


def test_rescore_missing_and_all(db: IndexDB, tmp_path: Path) -> None:
    root = tmp_path / "Photos"
    ids = add_photos(db, root, ["2023/a.jpg", "2023/b.jpg", "2024/c.jpg", "2024/d.jpg"])
    while (job := queue.claim(db)) is not None:
        queue.complete(db, job.job_id)
    with db.session() as session:  # a, b, c scored (c by an old model version); d never scored
        for photo_id, version in zip(ids[:3], ["v2", "v2", "v1"], strict=True):
            session.add(score_row(photo_id, version))
    assert queue.rescore(db, "koniq", mode="missing") == 1  # d
    assert queue.rescore(db, "koniq", mode="missing") == 0  # pending already
    assert queue.rescore(db, "koniq", mode="missing", model_version="v2") == 1  # c (v1)
    assert queue.rescore(db, "koniq", mode="all", paths=[root / "2023"]) == 2
    assert queue.rescore(db, "koniq", mode="all", paths=[root / "2023" / "a.jpg"]) == 0  # pending
    assert queue.rescore(db, "ava", mode="all", paths=[root / "2024", root / "2023/b.jpg"]) == 3
    assert queue.rescore(db, "ava", mode="missing", paths=[tmp_path / "elsewhere"]) == 0
    with db.session() as session:  # a vanished photo is not queued
        session.get_one(Photo, ids[0]).missing_since = datetime.now(UTC)
    assert queue.rescore(db, "ava", mode="all") == 0
    assert queue.queue_counts(db) == {"pending": 7, "running": 0, "done": 0, "failed": 0}
    with pytest.raises(Exception, match="choose missing or all"):
        queue.rescore(db, "koniq", mode="some")  # type: ignore[arg-type]


def score_row(photo_id: int, version: str) -> Score:
    return Score(
        photo_id=photo_id, model_id="koniq", model_version=version, variant="fp32", is_latest=True,
        score=3.0, raw=50.0, scale_min=1.0, scale_max=5.0, resolution_policy="max_side=1024",
        device="cpu", num_tokens=10, duration_s=0.1, scored_at=datetime.now(UTC),
    )  # fmt: skip


# --- the worker --------------------------------------------------------------------------------------------


def test_quiet_hours() -> None:
    night = (clock(22), clock(6))
    assert in_quiet_hours(clock(23, 30), night) and in_quiet_hours(clock(0), night)
    assert in_quiet_hours(clock(5, 59), night) and in_quiet_hours(clock(22), night)
    assert not in_quiet_hours(clock(6), night) and not in_quiet_hours(clock(12), night)
    lunch = (clock(12), clock(13))
    assert in_quiet_hours(clock(12, 30), lunch) and not in_quiet_hours(clock(13), lunch)
    assert not in_quiet_hours(clock(12), (clock(12), clock(12)))
    assert not in_quiet_hours(clock(3), None)
    # The daemon's loop asks the configuration, the workers the function: one answer, also when start == end.
    for window in (night, lunch, (clock(12), clock(12))):
        for hour in range(24):
            assert Config(quiet_hours=window).in_quiet_hours(clock(hour)) == in_quiet_hours(
                clock(hour), window
            )


def test_worker_scores_every_photo_once(db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]) -> None:
    root = tmp_path / "Photos"
    names = [f"{i:02}.jpg" for i in range(9)] + ["ünïcødé %41.jpg"]
    photo_ids = add_photos(db, root, names, image=True)
    worker = make_worker(db, scorers)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: worker.stats().done == 10)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    stats = worker.stats()
    assert (stats.done, stats.failed) == (10, 0) and stats.busy_s > 0
    assert queue.queue_counts(db) == {"pending": 0, "running": 0, "done": 10, "failed": 0}
    with db.session() as session:
        scores = {s.photo_id: s for s in session.scalars(select(Score))}
        photos = {p.id: p for p in session.scalars(select(Photo))}
        written = {w.path: w for w in session.scalars(select(WrittenFile))}
    assert set(scores) == set(photo_ids)
    for photo_id, name in zip(photo_ids, names, strict=True):
        path, score, photo = root / name, scores[photo_id], photos[photo_id]
        assert score.is_latest and score.written_to == "embedded" and 1 <= score.score <= 5
        fields = xmp_fields(path)
        assert float(fields["Score"]) == pytest.approx(score.score, abs=1e-3)
        # The index knows the version musiqd wrote: the watcher ignores its event; no rescore.
        signature = FileSignature.of(path)
        row = written[encode_path(path)]
        assert (row.dev, row.inode, row.size, row.mtime_ns) == (
            signature.dev, signature.inode, signature.size, signature.mtime_ns,
        )  # fmt: skip
        assert (photo.size, photo.mtime_ns, photo.inode) == (
            signature.size, signature.mtime_ns, signature.inode,
        )  # fmt: skip
        assert photo.content_hash == content_hash_file(path) and photo.format == "JPEG"
        assert (photo.width, photo.height) == (160, 120)
    # A second pass (a rescan enqueues everything it sees) does nothing.
    with db.session() as session:
        assert not any(queue.enqueue(session, photo_id, "koniq") for photo_id in photo_ids)
    assert worker.run_once() is None
    assert queue.queue_counts(db)["done"] == 10


def test_corrupt_photo_fails_after_retries_and_is_never_done(
    db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    root = tmp_path / "Photos"
    good = imagegen.make_jpeg(tmp_path / "good.jpg", 160, 120)
    root.mkdir()
    (root / "broken.jpg").write_bytes(good.read_bytes()[:2000])
    with db.session() as session:
        photo = upsert_photo(session, root / "broken.jpg", roots=[root])
        queue.enqueue(session, photo.id, "koniq")
    worker = make_worker(db, scorers, retries=2)
    outcomes = [worker.run_once() for _ in range(4)]
    assert [o.result if o else None for o in outcomes] == ["retry", "retry", "failed", None]
    message = outcomes[2].message if outcomes[2] else ""
    assert message and "broken.jpg" in message and "truncated" in message
    (job,) = jobs(db).values()
    assert (job.state, job.attempts, job.last_error) == ("failed", 3, message)
    with db.session() as session:
        assert session.scalar(select(Score.id)) is None
    assert worker.stats().failed == 1 and worker.stats().done == 0


def test_read_only_photo_is_scored_into_the_index_with_a_note(
    db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    root = tmp_path / "Photos"
    add_photos(db, root, ["locked.jpg"], image=True)
    (root / "locked.jpg").chmod(0o444)
    outcome = make_worker(db, scorers).run_once()
    assert outcome is not None and outcome.result == "done" and outcome.score is not None
    assert outcome.message and outcome.message.startswith("score not written: ")
    (job,) = jobs(db).values()
    assert job.state == "done" and job.last_error == outcome.message
    with db.session() as session:
        score = session.scalars(select(Score)).one()
        assert score.score == outcome.score and score.written_to == "none"
        assert session.scalar(select(WrittenFile.id)) is None
    assert xmp_fields(root / "locked.jpg") == {}
    (report,) = queue.recent_failures(db)
    assert report.state == "done" and report.error == outcome.message


def test_changed_file_waits_and_missing_root_postpones(
    db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    root = tmp_path / "Photos"
    ids = add_photos(db, root, ["a.jpg", "b.jpg"], image=True)
    with (root / "a.jpg").open("ab") as f:  # still being copied
        f.write(b"more")
    now = datetime.now().astimezone()
    offset = [0.0]
    worker = make_worker(db, scorers, clock=lambda: now + timedelta(seconds=offset[0]))
    outcome = worker.run_once()
    assert outcome is not None and outcome.result == "deferred" and outcome.path == root / "a.jpg"
    job = jobs(db)[ids[0]]
    assert (job.state, job.attempts) == ("pending", 0)
    assert job.next_attempt_at == (now + timedelta(seconds=SETTLE_DELAY_S)).astimezone(UTC)
    outcome = worker.run_once()  # meanwhile b.jpg
    assert outcome is not None and outcome.result == "done" and outcome.path == root / "b.jpg"
    offset[0] = SETTLE_DELAY_S
    outcome = worker.run_once()  # unchanged since: scored
    assert outcome is not None and outcome.result == "done" and outcome.path == root / "a.jpg"

    # A share that is not mounted: the root is empty. Its jobs wait; nothing fails.
    share = tmp_path / "Share"
    add_photos(db, share, ["x.jpg", "y.jpg"])
    for path in share.iterdir():
        path.unlink()
    outcome = worker.run_once()
    assert outcome is not None and outcome.result == "deferred" and "not mounted" in (outcome.message or "")
    waiting = [j for j in jobs(db).values() if j.state == "pending"]
    assert len(waiting) == 2 and all(j.attempts == 0 for j in waiting)
    due = (now + timedelta(seconds=offset[0] + UNAVAILABLE_DELAY_S)).astimezone(UTC)
    assert all(j.next_attempt_at == due for j in waiting)
    assert worker.run_once() is None
    # Only the file is gone (the root is there): a failure, retried, then final.
    (share / "z.jpg").write_bytes(b"something else")
    offset[0] += UNAVAILABLE_DELAY_S
    outcome = worker.run_once()
    assert outcome is not None and outcome.result == "retry" and "file not found" in (outcome.message or "")


def test_photo_that_keeps_killing_the_daemon_is_given_up(
    sqlite_db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    db = sqlite_db
    add_photos(db, tmp_path, ["a.jpg"], image=True)
    assert queue.claim(db) is not None  # claimed, then the process died
    assert queue.requeue_stale(db, retries=1) == queue.Requeued(1, [])
    suspect = queue.claim(db)  # alone this time, and the process died again: given up at the restart
    assert suspect is not None and suspect.interrupted == 1
    stale = queue.requeue_stale(db, retries=1)
    assert stale.requeued == 0 and [path.name for path, _ in stale.given_up] == ["a.jpg"]
    assert (
        "stopped 2 times while scoring this photo, at least 1 of them with no other" in stale.given_up[0][1]
    )
    (row,) = jobs(db).values()
    assert (row.state, row.attempts, row.interrupted) == ("failed", 0, 2)
    assert make_worker(db, scorers, retries=1).run_once() is None  # nothing left to claim


def test_pause_quiet_hours_and_stop_leave_nothing_running(
    sqlite_db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    db = sqlite_db
    add_photos(db, tmp_path, [f"{i}.jpg" for i in range(8)], image=True)
    hour = [23]
    paused = threading.Event()
    worker = make_worker(
        db,
        scorers,
        quiet_hours=(clock(22), clock(6)),
        poll_interval=0.02,
        clock=lambda: datetime.now().astimezone().replace(hour=hour[0]),
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, paused.is_set))
    thread.start()
    try:
        time.sleep(0.5)  # quiet hours: nothing claimed
        assert queue.queue_counts(db)["pending"] == 8
        paused.set()
        hour[0] = 12
        time.sleep(0.3)  # paused: nothing claimed
        assert queue.queue_counts(db)["pending"] == 8
        paused.clear()
        wait_for(lambda: worker.stats().done >= 1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    counts = queue.queue_counts(db)
    # The photo being scored was finished, the one decoded ahead was given back as it was.
    assert counts["running"] == 0 and counts["done"] == worker.stats().done < 8
    assert counts["pending"] == 8 - counts["done"]
    assert all(j.attempts == 0 for j in jobs(db).values() if j.state == "pending")


def test_moved_photo_keeps_its_score(db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]) -> None:
    root = tmp_path / "Photos"
    old_id, other_id = add_photos(db, root, ["2023/a.jpg", "2023/b.jpg"], image=True)
    worker = make_worker(db, scorers)
    list(iter(worker.run_once, None))  # every due job
    # Renamed into another folder (the mtime is kept), seen by the watcher as a new file.
    moved_path, duplicate = root / "best" / "a-renamed.jpg", root / "copy-of-b.jpg"
    moved_path.parent.mkdir()
    (root / "2023/a.jpg").rename(moved_path)
    duplicate.write_bytes((root / "2023/b.jpg").read_bytes())  # a copy: b.jpg is still there
    with db.session() as session:
        moved = upsert_photo(session, moved_path, roots=[root])
        assert queue.adopt_moved(session, moved, content_hash_file(moved_path))
        assert not queue.enqueue(session, moved.id, "koniq")
        copy = upsert_photo(session, duplicate, roots=[root])
        assert not queue.adopt_moved(session, copy, content_hash_file(duplicate))
        assert queue.enqueue(session, copy.id, "koniq")
        new_id, copy_id = moved.id, copy.id
    with db.session() as session:
        assert len(session.scalars(select(Score).where(Score.photo_id == new_id)).all()) == 1
        assert session.scalar(select(Score.id).where(Score.photo_id == old_id)) is None
        assert session.get_one(Photo, old_id).missing_since is not None
        assert session.get_one(Photo, new_id).content_hash == content_hash_file(moved_path)
    by_photo = jobs(db)
    assert old_id not in by_photo and by_photo[new_id].state == "done"
    assert by_photo[copy_id].state == "pending" and by_photo[other_id].state == "done"
    assert queue.rescore(db, "koniq", mode="missing") == 0  # the copy is pending, the rest scored


def test_a_renamed_photo_takes_its_sidecar_along(
    db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    """Sidecar mode: the daemon sees a photo renamed (a new file with a known content hash) and renames its
    sidecar too, so photo managers still find it; the index points at the new sidecar."""
    root = tmp_path / "Photos"
    (photo_id,) = add_photos(db, root, ["2023/a.jpg"], image=True)
    worker = make_worker(db, scorers, write_policy=WritePolicy(mode="sidecar"))
    list(iter(worker.run_once, None))
    old_photo, old_sidecar = root / "2023/a.jpg", root / "2023/a.jpg.xmp"
    sidecar_bytes = old_sidecar.read_bytes()
    new_photo = root / "best" / "a-renamed.jpg"
    new_photo.parent.mkdir()
    old_photo.rename(new_photo)

    with db.session() as session:
        outcome = ingest_file(session, new_photo, roots=[root], models=["koniq"], hash_new=True)

    new_sidecar = root / "best" / "a-renamed.jpg.xmp"
    assert outcome == "moved"
    assert not old_sidecar.exists() and new_sidecar.read_bytes() == sidecar_bytes
    with db.session() as session:
        score = session.scalars(select(Score)).one()
        assert score.photo_id != photo_id and score.written_path == encode_path(new_sidecar)
    # A copy is not a move: the original keeps its sidecar, the copy gets none from it.
    copy = root / "copy.jpg"
    copy.write_bytes(new_photo.read_bytes())
    with db.session() as session:
        assert ingest_file(session, copy, roots=[root], models=["koniq"], hash_new=True) == "queued"
    assert new_sidecar.exists() and not (root / "copy.jpg.xmp").exists()


def test_a_kill_with_several_photos_in_flight_charges_none_of_them(db: IndexDB, tmp_path: Path) -> None:
    """Even without retries: photos in flight together when the process died are suspects, not failures;
    the next kill, with one of them alone in flight, is charged to that one."""
    add_photos(db, tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    first, ahead = queue.claim(db), queue.claim(db)  # one in inference, one decoded ahead
    assert first is not None and ahead is not None
    assert queue.requeue_stale(db, retries=0) == queue.Requeued(2, [])
    assert sorted(j.interrupted for j in jobs(db).values()) == [0, 1, 1]
    fresh = queue.claim(db, suspects=False)
    assert fresh is not None and fresh.interrupted == 0 and fresh.job_id not in (first.job_id, ahead.job_id)
    assert queue.claim(db, suspects=False) is None  # the suspects wait until nothing else is in flight
    queue.complete(db, fresh.job_id)
    alone = queue.claim(db)
    assert alone is not None and alone.job_id == first.job_id
    stale = queue.requeue_stale(db, retries=0)
    assert stale.requeued == 0 and [p.name for p, _ in stale.given_up] == [first.path.name]
    states = {j.id: (j.state, j.attempts, j.interrupted) for j in jobs(db).values()}
    assert states[first.job_id] == ("failed", 0, 2)
    assert states[ahead.job_id] == ("pending", 0, 1)


def test_a_folder_linked_out_of_the_root_is_neither_read_nor_written(
    sqlite_db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    """A queued photo whose folder became a symbolic link to a folder outside the root: the job fails at
    once with the reason, and the file outside stays byte-identical (no embedded write, no sidecar)."""
    db = sqlite_db
    root = tmp_path / "Photos"
    add_photos(db, root, ["trip/a.jpg"], image=True)
    outside = tmp_path / "elsewhere"
    (root / "trip").rename(outside)
    (root / "trip").symlink_to(outside, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    outcome = make_worker(db, scorers, retries=3).run_once()
    assert outcome is not None and outcome.result == "failed"
    assert f"its folder is {outside} through a symbolic link, outside {root}" in (outcome.message or "")
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    (row,) = jobs(db).values()
    assert (row.state, row.attempts) == ("failed", 1)  # not retried: only the links can change it


def test_a_link_inside_the_root_is_followed(
    sqlite_db: IndexDB, tmp_path: Path, scorers: dict[str, Scorer]
) -> None:
    """Links that stay inside the root, and a root that is itself reached through a link, are fine."""
    db = sqlite_db
    real_root = tmp_path / "volume1" / "photos"
    add_photos(db, real_root, ["2024/a.jpg"], image=True)
    linked_root = tmp_path / "Photos"
    linked_root.symlink_to(real_root, target_is_directory=True)
    (real_root / "latest").symlink_to(real_root / "2024", target_is_directory=True)
    from musiq_daemon.paths import outside_root

    assert outside_root(linked_root / "latest" / "a.jpg", linked_root) is None
    assert outside_root(real_root / "latest" / "a.jpg", linked_root) is None
    outcome = make_worker(db, scorers).run_once()
    assert outcome is not None and outcome.result == "done"


def test_leases_keep_live_owners_jobs_and_free_expired_ones(db: IndexDB, tmp_path: Path) -> None:
    """A job claimed by a worker on another machine stays its own while the lease is renewed, and goes
    back to the queue (no attempt counted) once the lease has run out: that worker is gone."""
    add_photos(db, tmp_path, ["a.jpg", "b.jpg"])
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    remote = "desktop:4242:cafe0001"  # not this machine: only its lease says whether it lives
    job = queue.claim(db, owner=remote, lease_s=60, now=start)
    assert job is not None
    later = start + timedelta(seconds=45)
    assert queue.requeue_stale(db, now=later).requeued == 0  # the lease holds
    assert queue.renew_leases(db, remote, lease_s=60, now=later) == 1
    assert queue.requeue_stale(db, now=start + timedelta(seconds=100)).requeued == 0  # renewed at 45 s
    assert queue.requeue_stale(db, now=start + timedelta(seconds=106)).requeued == 1  # expired at 105 s
    row = next(j for j in jobs(db).values() if j.id == job.job_id)
    assert (row.state, row.attempts, row.interrupted, row.lease_owner) == ("pending", 0, 1, None)


def test_a_dead_local_owner_loses_its_jobs_at_once(db: IndexDB, tmp_path: Path) -> None:
    """A worker of this machine whose process is gone: its jobs are taken back without waiting for the
    lease; a live one's are not."""
    add_photos(db, tmp_path, ["a.jpg", "b.jpg"])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone_owner = f"{socket.gethostname()}:{int(dead.stdout)}:00000000"
    live_owner = queue.owner_id()
    assert queue.owner_gone(gone_owner) and not queue.owner_gone(live_owner)
    first = queue.claim(db, owner=gone_owner)
    second = queue.claim(db, owner=live_owner)
    assert first is not None and second is not None
    assert queue.requeue_stale(db).requeued == 1
    states = {j.id: j.state for j in jobs(db).values()}
    assert states == {first.job_id: "pending", second.job_id: "running"}
