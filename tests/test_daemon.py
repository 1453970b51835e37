"""The daemon as users run it: ``python -m musiq_daemon watch`` in a subprocess, on real folders and files.

A module-scoped daemon per observer (inotify, then polling) serves the scenario tests; each test works in
a folder of its own. Start-up, shutdown, systemd notifications and kill -9 recovery get daemons of their
own. "Exactly once" is counted in the index: one score row, one attempt, one file written by musiqd, and
the photo's modification time equal to that write's (nothing wrote it again).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from imagegen import jpeg_bytes
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from musiq_daemon.cli import app
from musiq_daemon.config import DEFAULT_EXCLUDE, Config
from musiq_daemon.daemon.lock import RootLocks, daemon_running
from musiq_daemon.daemon.mounts import MountTable
from musiq_daemon.daemon.scan import ingest_file, scan_root
from musiq_daemon.daemon.state import read_state
from musiq_daemon.daemon.systemd import sd_notify
from musiq_daemon.daemon.watch import choose_observer
from musiq_daemon.errors import AlreadyRunningError, UsageError
from musiq_daemon.index import IndexDB, open_index
from musiq_daemon.index.models import Job, Photo, Score, WorkerRow, WrittenFile
from musiq_daemon.index.paths import decode_path, encode_path
from musiq_daemon.metadata.content_hash import content_hash_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and /proc are Linux")

QUIET = 0.3  # quiet_period
MAX_WAIT = 8.0  # longer than the slow copies below, short enough for the corrupt-file test under polling
POLL = 0.3  # poll_interval
TIMEOUT = 120.0  # upper bound of every wait (they normally end in seconds)
# After this long, the events of musiqd's own last writes have been seen (a poll), settled (the quiet period)
# and handled: a photo that would be queued again would be by then.
SETTLE = 2 * QUIET + 2 * POLL + 0.5


# --- helpers -----------------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def photo_bytes(seed: int, width: int = 320, height: int = 240) -> bytes:
    return jpeg_bytes(width, height, seed=seed)


def big_jpeg(target: int, seed: int) -> bytes:
    """A valid JPEG of about ``target`` bytes: the image data comes after megabytes of APP15 segments, so
    that any prefix of the file lacks the end of the image (as a half-copied camera file does)."""
    base = photo_bytes(seed)
    segment = b"\xff\xef" + (65535).to_bytes(2, "big") + os.urandom(65533)
    return base[:2] + segment * (target // len(segment)) + base[2:]


def write_config(
    path: Path, roots: list[Path], db: Path, *, observer: str, retries: int = 0, workers: int = 1
) -> Path:
    path.write_text(
        f"roots = {json.dumps([str(r) for r in roots])}\n"
        f'database = "{db}"\n'
        f'observer = "{observer}"\n'
        f"poll_interval = {POLL}\nquiet_period = {QUIET}\nmax_wait = {MAX_WAIT}\n"
        # One inference thread and (by default) no retries: fast and deterministic on a busy machine.
        f'threads = 1\nworkers = {workers}\nnice = 0\nioclass = "none"\nretries = {retries}\n'
    )
    return path


class Daemon:
    def __init__(
        self, workdir: Path, config: Path, db_path: Path, env: dict[str, str], mode: str = ""
    ) -> None:
        self.workdir, self.config, self.db_path, self.env, self.mode = workdir, config, db_path, env, mode
        self.photos, self.share = workdir / "photos", workdir / "share"  # the shared daemons' roots
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._db: IndexDB | None = None

    def start(self, *options: str, wait_ready: bool = True) -> Daemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "musiq_daemon", "watch", "--config", str(self.config), *options],
                stdout=subprocess.DEVNULL, stderr=log, env=self.env, cwd=self.workdir,
            )  # fmt: skip
        if wait_ready:
            self.wait_log("initial scan done")
        return self

    @property
    def db(self) -> IndexDB:
        if self._db is None:
            self._db = open_index(str(self.db_path))
        return self._db

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = TIMEOUT) -> None:
        def found() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            return text in self.logs()

        wait_until(found, f"log line {text!r}", timeout)

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """(exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """Leave nothing running when a test failed half-way."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._db is not None:
            self._db.close()
            self._db = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "musiq_daemon", *args, "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, timeout=60, check=False,
        )  # fmt: skip


@dataclass(frozen=True)
class View:
    """One photo as the index has it."""

    photo_id: int
    missing: bool
    scores: int  # score rows
    score_ids: tuple[int, ...]
    state: str | None  # the koniq job's
    attempts: int
    last_error: str | None
    updated_at: datetime | None
    scored_at: datetime | None
    mtime_ns: int
    written: int  # written_files rows for the path
    written_mtime_ns: int | None


def view(db: IndexDB, path: Path) -> View | None:
    with db.session() as s:
        photo = None
        for root in path.parents:  # the photo is recorded under its root, whichever folder above it that is
            photo = s.scalars(
                select(Photo).where(
                    Photo.root == encode_path(root), Photo.rel_path == encode_path(path.relative_to(root))
                )
            ).first()
            if photo is not None:
                break
        if photo is None:
            return None
        scores = s.scalars(select(Score).where(Score.photo_id == photo.id)).all()
        job = s.scalars(select(Job).where(Job.photo_id == photo.id, Job.model_id == "koniq")).first()
        written = s.scalars(select(WrittenFile).where(WrittenFile.path == encode_path(path))).all()
        return View(
            photo.id, photo.missing_since is not None, len(scores), tuple(sorted(x.id for x in scores)),
            job.state if job else None, job.attempts if job else 0, job.last_error if job else None,
            job.updated_at if job else None, max((x.scored_at for x in scores), default=None),
            photo.mtime_ns, len(written), written[0].mtime_ns if written else None,
        )  # fmt: skip


def wait_state(db: IndexDB, paths: list[Path], state: str = "done", timeout: float = TIMEOUT) -> list[View]:
    """Wait until every photo's job is in ``state`` (one query per check: the daemon needs the CPU)."""
    wanted = set(paths)

    def ready() -> bool:
        with db.session() as s:
            rows = s.execute(
                select(Photo.root, Photo.rel_path)
                .join(Job, Job.photo_id == Photo.id)
                .where(Job.state == state)
            ).all()
        return wanted <= {Path(decode_path(root)) / decode_path(rel) for root, rel in rows}

    wait_until(ready, f"{len(paths)} photos {state}", timeout, every=0.5)
    return [v for p in paths if (v := view(db, p)) is not None]


def assert_scored_once(db: IndexDB, path: Path) -> View:
    v = view(db, path)
    assert v is not None, path
    assert (v.state, v.scores, v.attempts, v.missing) == ("done", 1, 1, False), (path, v)
    # Embedded: exactly one write by musiqd, and the file is still that version.
    assert v.written == 1 and v.written_mtime_ns == path.stat().st_mtime_ns == v.mtime_ns, (path, v)
    return v


def copy_slowly(
    data: bytes, target: Path, chunks: int, pause: float, *, pauses_at: set[int] | None = None
) -> float:
    """Write ``data`` to ``target`` in ``chunks`` writes through one open file, sleeping ``pause`` after each
    (or only after those in ``pauses_at``); returns the time.time() the copy finished."""
    size = -(-len(data) // chunks)
    with target.open("wb") as out:
        for i in range(chunks):
            out.write(data[i * size : (i + 1) * size])
            out.flush()
            if pauses_at is None or i in pauses_at:
                time.sleep(pause)
    return time.time()


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MUSIQD_", "NOTIFY_", "WATCHDOG_"))}
    environ.pop("JOURNAL_STREAM", None)
    environ["MUSIQD_MODEL_DIR"] = str(models_root)
    environ["MUSIQD_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    return environ


@pytest.fixture(scope="module", params=["native", "poll"])
def daemon(
    request: pytest.FixtureRequest, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp(f"daemon-{request.param}")
    roots = [work / "photos", work / "share"]
    for root in roots:
        root.mkdir()
    # Two workers: the burst goes twice as fast on two cores, and claims race as they would on a NAS.
    config = write_config(
        work / "config.toml", roots, work / "index.sqlite3", observer=request.param, workers=2
    )
    d = Daemon(work, config, work / "index.sqlite3", env, request.param)
    try:
        yield d.start()
        code, _ = d.stop()
        assert code == 0, d.logs()[-3000:]
        assert "Traceback" not in d.logs(), d.logs()
    finally:
        d.kill()


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Callable[[Path, Path, dict[str, str]], Daemon]]:
    """Daemons of a test's own (killed at the end if the test failed before stopping them)."""
    made: list[Daemon] = []

    def make(workdir: Path, config: Path, environ: dict[str, str] = env) -> Daemon:
        made.append(Daemon(workdir, config, workdir / "index.sqlite3", environ))
        return made[-1]

    yield make
    for d in made:
        d.kill()


def folder(d: Daemon, name: str) -> Path:
    path = d.photos / name
    path.mkdir()
    return path


# --- scenarios, under both observers -----------------------------------------------------------------------


def test_observer_in_use(daemon: Daemon) -> None:
    assert f"watching {daemon.photos}: {daemon.mode} (" in daemon.logs()


def test_burst_scored_exactly_once(daemon: Daemon) -> None:
    target = folder(daemon, "burst")
    paths = [target / f"IMG_{i:04d}.jpg" for i in range(300)]
    for i, path in enumerate(paths):
        path.write_bytes(photo_bytes(1000 + i, 96, 64))
    wait_state(daemon.db, paths, timeout=240)
    time.sleep(SETTLE)
    for path in paths:
        assert_scored_once(daemon.db, path)


def test_slow_copy_scored_once_after_it_completes(daemon: Daemon) -> None:
    target = folder(daemon, "slow")
    # 20 MB in 40 writes, 0.1 s apart: each write restarts the quiet period.
    fast_pauses = target / "big.jpg"
    finished = copy_slowly(big_jpeg(20_000_000, seed=7), fast_pauses, chunks=40, pause=QUIET / 5)
    # The same with three pauses longer than the quiet period while the file stays open, half-written.
    long_pauses = target / "big-stalled.jpg"
    finished_stalled = copy_slowly(
        big_jpeg(6_000_000, seed=8), long_pauses, chunks=4, pause=QUIET * 2.5, pauses_at={0, 1, 2}
    )
    wait_state(daemon.db, [fast_pauses, long_pauses])
    time.sleep(SETTLE)
    for path, end in ((fast_pauses, finished), (long_pauses, finished_stalled)):
        v = assert_scored_once(daemon.db, path)
        assert v.updated_at is not None and v.updated_at.timestamp() >= end, (path, v.updated_at, end)
        assert f"{path}: the file changed" not in daemon.logs()  # never queued half-written


def test_polling_queues_a_copy_one_quiet_period_after_it_last_changed(tmp_path: Path) -> None:
    """Polling reports no close-after-write: a file it saw growing is ready one quiet period after the
    growth stops (and its structure is complete), not after max_wait."""
    from musiq_daemon.daemon.watch import RootWatcher, Settler
    from musiq_daemon.discover import DEFAULT_FILTER

    ready: dict[Path, float] = {}
    settler = Settler(
        lambda path, digest: ready.setdefault(path, time.time()) if digest else None,
        lambda files, folders: None,
        lambda path, info: False,
        quiet_period=0.5,
        max_wait=120.0,
    )
    settler.start()
    watcher = RootWatcher.start(
        tmp_path, setting="poll", poll_interval=0.1, path_filter=DEFAULT_FILTER, settler=settler
    )
    try:
        target = tmp_path / "copy.jpg"
        # Polls see it grow several times (0.15 s between writes, polled every 0.1 s).
        finished = copy_slowly(big_jpeg(3_000_000, seed=11), target, chunks=12, pause=0.15)
        wait_until(lambda: target in ready, "the copy to be ready", timeout=30.0, every=0.05)
        assert watcher.mode == "poll"
        assert 0.0 < ready[target] - finished < 10.0, ready[target] - finished  # not max_wait (120 s)
    finally:
        watcher.stop()
        watcher.join(5.0)
        settler.stop()
        settler.join(5.0)


def test_rename_move_keep_score_and_deletion_marks_missing(daemon: Daemon) -> None:
    target = folder(daemon, "moves")
    a, b, c = (target / name for name in ("a.jpg", "b.jpg", "c.jpg"))
    for seed, path in enumerate((a, b, c)):
        path.write_bytes(photo_bytes(200 + seed))
    before = dict(zip((a, b, c), wait_state(daemon.db, [a, b, c]), strict=True))
    time.sleep(SETTLE)
    (target / "sub").mkdir()
    renamed, moved = target / "a-renamed.jpg", target / "sub" / "b.jpg"
    a.rename(renamed)
    b.rename(moved)
    c.unlink()

    def settled() -> bool:
        views = [view(daemon.db, p) for p in (renamed, moved, a, b, c)]
        return all(v is not None and v.scores == 1 for v in views[:2]) and all(
            v is not None and v.missing for v in views[2:]
        )

    wait_until(settled, "moves and the deletion recorded")
    time.sleep(SETTLE)
    for old, new in ((a, renamed), (b, moved)):
        v = view(daemon.db, new)
        assert v is not None and v.state == "done" and not v.missing
        assert v.score_ids == before[old].score_ids  # the same score row: kept, not scored again
        assert v.attempts <= 1
        old_view = view(daemon.db, old)
        assert old_view is not None and old_view.missing
    gone = view(daemon.db, c)
    assert gone is not None and gone.missing and gone.scores == 1  # kept in the index, only marked


def test_corrupt_and_half_written_files_fail_with_reason(daemon: Daemon) -> None:
    target = folder(daemon, "broken")
    corrupt, half, good = target / "corrupt.jpg", target / "half.jpg", target / "good.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(5000))
    data = photo_bytes(300)
    half.write_bytes(data[: len(data) // 2])
    views = wait_state(daemon.db, [corrupt, half], "failed", timeout=MAX_WAIT + 60)
    assert all(v.last_error for v in views)
    assert "truncated" in (views[1].last_error or "")
    good.write_bytes(photo_bytes(301))  # the daemon keeps going
    wait_state(daemon.db, [good])
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert any(e["path"] == str(half) and "truncated" in e["error"] for e in status["errors"])


def test_sidecars_junk_and_own_temp_files_ignored(daemon: Daemon) -> None:
    target = folder(daemon, "junk")
    photo = target / "keep.jpg"
    photo.write_bytes(photo_bytes(400))
    first = wait_state(daemon.db, [photo])[0]
    time.sleep(SETTLE)
    (target / "keep.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    (target / "keep.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><!-- edited --></x:xmpmeta>")
    for junk in ("@eaDir/keep.jpg/SYNOPHOTO_THUMB_M.jpg", "#recycle/old.jpg", ".@__thumb/t.jpg"):
        (target / junk).parent.mkdir(parents=True, exist_ok=True)
        (target / junk).write_bytes(photo_bytes(401))
    (target / "upload.jpg.part").write_bytes(photo_bytes(402))
    (target / ".musiqd-tmp-keep.jpg.x1y2").write_bytes(photo_bytes(403))
    time.sleep(SETTLE)
    assert view(daemon.db, photo) == first  # untouched: not queued, not scored again
    with daemon.db.session() as s:
        names = {Path(p).name for p in s.scalars(select(Photo.rel_path).where(Photo.rel_path.like("junk/%")))}
    assert names == {"keep.jpg"}


def test_unmounted_share_is_not_marked_missing(daemon: Daemon) -> None:
    share = daemon.share
    mounted = share / "photos"
    mounted.mkdir()
    paths = [mounted / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(photo_bytes(500 + i))
    before = wait_state(daemon.db, paths)
    time.sleep(SETTLE)
    # An unmount, atomically: the root is suddenly empty.
    away = daemon.workdir / "unmounted"
    mounted.rename(away)
    daemon.wait_log(f"root {share} unavailable")
    time.sleep(SETTLE)
    assert [view(daemon.db, p) for p in paths] == before  # nothing marked missing
    away.rename(mounted)  # mounted again
    time.sleep(SETTLE)
    assert [view(daemon.db, p) for p in paths] == before  # and nothing scored again


# --- commands against the running daemon (the observer does not matter) ----------------------------------


def musiqd(d: Daemon, *args: str) -> Result:
    """A command in this process (no interpreter start-up per call), against the running daemon's index."""
    return CliRunner().invoke(app, [*args, "--config", str(d.config)], env=d.env)


def test_pause_resume_status_notify_rescore(daemon: Daemon) -> None:
    if daemon.mode != "native":
        pytest.skip("the commands talk to the index, the same under both observers")
    target = folder(daemon, "commands")
    assert "paused" in musiqd(daemon, "pause").stdout
    wait_until(lambda: read_state(daemon.db).state == "paused", "paused")  # type: ignore[union-attr]
    waiting = target / "waiting.jpg"
    waiting.write_bytes(photo_bytes(600))
    wait_state(daemon.db, [waiting], "pending")
    time.sleep(1.0)
    assert view(daemon.db, waiting).state == "pending"  # type: ignore[union-attr]
    musiqd(daemon, "resume")
    wait_state(daemon.db, [waiting])

    # notify: queued at once, and still scored exactly once when the watcher sees it too.
    told = target / "told.jpg"
    told.write_bytes(photo_bytes(601))
    result = musiqd(daemon, "notify", str(told))
    assert result.exit_code == 0 and f"{told}" in result.stdout, result.output
    wait_state(daemon.db, [told])
    time.sleep(SETTLE)
    assert_scored_once(daemon.db, told)
    outside = daemon.workdir / "outside.jpg"
    outside.write_bytes(photo_bytes(602))
    result = musiqd(daemon, "notify", str(outside))
    assert result.exit_code == 1 and "not under a watched root" in result.stderr
    # A folder inside the root that links out of it: the path looks inside, the file is not.
    secret_dir = daemon.workdir / "secret"
    secret_dir.mkdir(exist_ok=True)
    secret = secret_dir / "secret.jpg"
    secret.write_bytes(photo_bytes(603))
    (target / "linkdir").symlink_to(secret_dir, target_is_directory=True)
    result = musiqd(daemon, "notify", str(target / "linkdir" / "secret.jpg"))
    assert result.exit_code == 1 and f"its folder is {secret_dir} through a symbolic link" in result.stderr
    assert view(daemon.db, target / "linkdir" / "secret.jpg") is None
    assert secret.read_bytes() == photo_bytes(603) and [p.name for p in secret_dir.iterdir()] == [
        "secret.jpg"
    ]

    # The real command, as a user runs it next to the daemon.
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["running"] and status["state"] == "running" and status["models"] == ["koniq"]
    assert status["device"] == "cpu" and status["scored"] >= 2 and status["throughput_per_min"] > 0
    assert status["queue"]["running"] == 0
    text = musiqd(daemon, "status").stdout
    assert "state:      running" in text and "photos/min" in text

    assert musiqd(daemon, "rescore", "--model", "koniq", "--missing", str(target)).stdout.startswith(
        "queued 0 "
    )
    before = view(daemon.db, told)
    assert before is not None
    result = musiqd(daemon, "rescore", "--model", "koniq", "--all", str(target))
    assert result.stdout.startswith("queued 2 "), result.output

    def rescored() -> bool:
        now = view(daemon.db, told)
        return now is not None and now.state == "done" and now.scored_at != before.scored_at

    wait_until(rescored, "rescored")
    assert isinstance(musiqd(daemon, "rescore", "--model", "koniq", str(target)).exception, UsageError)
    unknown = musiqd(daemon, "rescore", "--model", "../../etc", "--all", str(target))
    assert isinstance(unknown.exception, UsageError) and "unknown model '../../etc'" in str(unknown.exception)
    with daemon.db.session() as s:  # nothing was queued for it
        assert s.scalar(select(func.count()).select_from(Job).where(Job.model_id == "../../etc")) == 0


def test_sighup_reloads_the_configuration(daemon: Daemon) -> None:
    if daemon.mode != "native":
        pytest.skip("reloading does not depend on the observer")
    original = daemon.config.read_text()
    daemon.config.write_text(original + f"exclude = {json.dumps([*DEFAULT_EXCLUDE, 'skip*'])}\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_log("config: exclude:")
    daemon.wait_log("watching")
    target = folder(daemon, "reload")
    skipped, kept = target / "skip-me.jpg", target / "keep-me.jpg"
    skipped.write_bytes(photo_bytes(700))
    kept.write_bytes(photo_bytes(701))
    wait_state(daemon.db, [kept])
    time.sleep(SETTLE)
    assert view(daemon.db, skipped) is None
    daemon.config.write_text(original)
    daemon.send(signal.SIGHUP)
    daemon.wait_log("skip*] -> [")


# --- start-up, shutdown, systemd -------------------------------------------------------------------------


def test_systemd_notify_journal_single_instance_and_sigterm(
    env: dict[str, str], spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(photo_bytes(800 + i))
    config = write_config(tmp_path / "config.toml", [root], tmp_path / "index.sqlite3", observer="auto")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_name = f"musiqd-test-{os.getpid()}-{time.monotonic_ns()}"
    notify.bind("\0" + notify_name)  # abstract namespace, as systemd's own socket
    notify.settimeout(TIMEOUT)
    log_path = tmp_path / "daemon.log"
    log_path.touch()
    info = log_path.stat()
    run_env = env | {
        "NOTIFY_SOCKET": "@" + notify_name,
        "WATCHDOG_USEC": "1000000",
        "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",
    }
    # Command-line options override the file: the scores go into sidecars (embedded by default).
    d = spawn(tmp_path, config, run_env).start("--write-mode", "sidecar", "--threads", "2", wait_ready=False)
    messages: list[str] = []
    while not any("READY=1" in m for m in messages):
        messages.append(notify.recv(4096).decode())
    assert any(m.startswith("EXTEND_TIMEOUT_USEC=") or "STATUS=" in m for m in messages)
    # After READY: watchdog pings every half WATCHDOG_USEC, and STATUS lines.
    later: list[str] = []
    while not ("WATCHDOG=1" in later and any(m.startswith("STATUS=") for m in later)) and len(later) < 40:
        later.append(notify.recv(4096).decode())
    assert any(m.startswith("STATUS=") and "queued" in m for m in later), later
    # Journald: "<priority>LEVEL message", no time stamp (journald adds it).
    first = d.logs().splitlines()[0]
    assert first.startswith(("<6>INFO ", "<4>WARNING ")), first

    second = subprocess.run(
        [sys.executable, "-m", "musiq_daemon", "watch", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode == 13
    assert "musiqd: error: another musiqd already watches " in second.stderr
    assert f"with the index sqlite:///{tmp_path / 'index.sqlite3'} (pid " in second.stderr
    assert str(d.proc.pid) in second.stderr  # type: ignore[union-attr]

    # SIGTERM while scoring a backlog: a clean exit within 5 s, nothing left running.
    for i in range(30):
        (root / f"busy-{i}.jpg").write_bytes(photo_bytes(900 + i))
    wait_state(d.db, [root / "busy-0.jpg"])
    assert (root / "busy-0.jpg.xmp").is_file()
    assert (root / "busy-0.jpg").read_bytes() == photo_bytes(900)
    code, seconds = d.stop()
    assert code == 0 and seconds < 5.0, (code, seconds, d.logs()[-2000:])
    assert "INFO stopped" in d.logs()
    db = open_index(str(tmp_path / "index.sqlite3"))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.state == "running")) == 0
    db.close()
    notify.close()


def test_kill_9_during_backfill_then_restart(spawn: Callable[..., Daemon], tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    originals = {}
    for i in range(24):
        path = root / f"{i:02d}.jpg"
        path.write_bytes(photo_bytes(1100 + i))
        originals[path] = content_hash_file(path)
    # With retries: the photo being scored when the process is killed counts that as an attempt.
    config = write_config(
        tmp_path / "config.toml", [root], tmp_path / "index.sqlite3", observer="native", retries=3
    )
    d = spawn(tmp_path, config).start()

    def done_count() -> int:
        with d.db.session() as s:
            return s.scalar(select(func.count()).select_from(Job).where(Job.state == "done")) or 0

    wait_until(lambda: done_count() >= 6, "part of the backfill")
    d.stop(signal.SIGKILL)
    d.start()
    paths = sorted(originals)
    wait_state(d.db, paths)
    time.sleep(SETTLE)
    for path in paths:
        v = view(d.db, path)
        assert v is not None and v.state == "done" and v.scores == 1 and not v.missing, (path, v)
        assert content_hash_file(path) == originals[path]  # image data intact
    assert not [p for p in root.iterdir() if p.name.startswith(".musiqd-tmp-")]
    code, _ = d.stop()
    assert code == 0


def test_a_photo_that_kills_the_daemon_is_failed_and_its_neighbours_are_not(
    spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A photo whose scoring kills the process (here: the test kills -9 whenever it is in flight, as an
    out-of-memory kill would) is failed after ``retries`` kills with nothing else in flight; the photos
    that were in flight with it the first time are scored like any other, no attempt charged."""
    root = tmp_path / "photos"
    root.mkdir()
    others = []
    for i in range(8):
        path = root / f"{i:02d}.jpg"
        path.write_bytes(photo_bytes(1300 + i))
        others.append(path)
    poison = root / "99-poison.jpg"  # the last one queued, so that the first kill finds a neighbour in flight
    poison.write_bytes(jpeg_bytes(4000, 3000, seed=7))  # a large photo: in flight for a while
    retries = 2
    config = write_config(
        tmp_path / "config.toml", [root], tmp_path / "index.sqlite3", observer="native", retries=retries
    )
    d = spawn(tmp_path, config)
    in_flight_at_kills: list[set[str]] = []
    for _ in range(retries + 3):
        d.start(wait_ready=False)

        # Until the new process has requeued (or given up) what the killed one left running, those rows
        # are stale.
        def settled(kills: int = len(in_flight_at_kills)) -> bool:
            logs = d.logs()
            return logs.count("left running by a previous run") + logs.count("not trying again") >= kills

        wait_until(settled, "the requeue", every=0.01)
        deadline = time.monotonic() + TIMEOUT
        killed = False
        while time.monotonic() < deadline:
            with d.db.session() as s:
                running = set(
                    s.scalars(
                        select(Photo.rel_path)
                        .join(Job, Job.photo_id == Photo.id)
                        .where(Job.state == "running")
                    )
                )
                poison_state = s.scalar(
                    select(Job.state)
                    .join(Photo, Job.photo_id == Photo.id)
                    .where(Photo.rel_path == poison.name)
                )
            if poison_state == "failed":
                break
            if poison.name in running:
                d.stop(signal.SIGKILL)
                in_flight_at_kills.append(running)
                killed = True
                break
            time.sleep(0.005)
        if not killed:
            break
    else:
        raise AssertionError(f"the photo was never given up: in flight at each kill {in_flight_at_kills}")
    assert len(in_flight_at_kills) == retries + 1, in_flight_at_kills
    # Every kill after the first found the suspect alone: no neighbour was charged with it.
    assert all(flight == {poison.name} for flight in in_flight_at_kills[1:]), in_flight_at_kills
    wait_state(d.db, others)
    with d.db.session() as s:
        poison_job = s.scalars(
            select(Job).join(Photo, Job.photo_id == Photo.id).where(Photo.rel_path == poison.name)
        ).one()
        assert poison_job.state == "failed" and poison_job.interrupted == retries + 1
        assert f"musiqd stopped {retries + 1} times while scoring this photo" in (poison_job.last_error or "")
        neighbours = s.scalars(
            select(Job).join(Photo, Job.photo_id == Photo.id).where(Photo.rel_path != poison.name)
        ).all()
        assert len(neighbours) == len(others)
        for job in neighbours:  # done with their first attempt; at most the one interruption they witnessed
            assert (job.state, job.attempts, job.last_error) == ("done", 1, None), job.photo_id
            assert job.interrupted <= 1
    assert sum(job.interrupted for job in neighbours) == len(in_flight_at_kills[0]) - 1
    code, _ = d.stop()
    assert code == 0


def _bindfs(source: Path, target: Path, *options: str) -> str | None:
    """Mount ``source`` on ``target`` with bindfs (a FUSE filesystem, as an SMB or sshfs share looks to the
    daemon); None on success, else why not."""
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (apt install bindfs)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    extra = ["-o", ",".join(options)] if options else []
    done = subprocess.run(
        ["bindfs", *extra, str(source), str(target)], capture_output=True, text=True, check=False
    )
    return None if done.returncode == 0 else f"bindfs failed: {done.stderr.strip()}"


def _unmount_fuse(target: Path) -> None:
    for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        if (
            shutil.which(command[0])
            and subprocess.run([*command, str(target)], capture_output=True).returncode == 0
        ):
            return


def test_writes_on_a_share_that_rejects_xattrs_and_ownership(env: dict[str, str], tmp_path: Path) -> None:
    """A FUSE share like an SMB mount: no extended attributes, chown refused, chmod ignored. The optional
    calls fail, the write does not, and no temporary file is left on the share."""
    server, share = tmp_path / "server", tmp_path / "share"
    server.mkdir()
    share.mkdir()
    photo = server / "IMG_1.jpg"
    photo.write_bytes(photo_bytes(1600))
    photo.chmod(0o644)
    why_not = _bindfs(server, share, "xattr-none", "chown-deny", "chmod-ignore")
    if why_not is not None:
        pytest.skip(why_not)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "musiq_daemon", "score", "--write", "--device", "cpu",
             "--db", str(tmp_path / "index.sqlite3"), str(share / "IMG_1.jpg")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0 and "[embedded]" in result.stdout, result.stderr
        assert b"MUSIQ" in photo.read_bytes() and photo.read_bytes() != photo_bytes(1600)
        assert photo.stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in server.iterdir()) == ["IMG_1.jpg"]  # no .musiqd-tmp-* left
    finally:
        _unmount_fuse(share)


def test_a_share_mounted_after_start_is_watched_by_polling(
    spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The boot race: the root is an empty local folder when the daemon starts (inotify), then a FUSE share
    is mounted on it. The daemon notices the new filesystem, polls it, scores what is on it, and sees
    photos that arrive on the share's side (no inotify event ever reaches the mount point)."""
    root, share = tmp_path / "photos", tmp_path / "server"
    root.mkdir()
    share.mkdir()
    (share / "on-share.jpg").write_bytes(photo_bytes(1500))
    config = write_config(tmp_path / "config.toml", [root], tmp_path / "index.sqlite3", observer="auto")
    d = spawn(tmp_path, config).start()
    try:
        d.wait_log(f"watching {root}: native")
        why_not = _bindfs(share, root)
        if why_not is not None:
            pytest.skip(why_not)
        d.wait_log(f"root {root} is now on fuse")
        d.wait_log(f"watching {root}: poll")
        wait_state(d.db, [root / "on-share.jpg"])
        (share / "arrived-later.jpg").write_bytes(photo_bytes(1501))  # written on the server's side
        wait_state(d.db, [root / "arrived-later.jpg"])
        assert not [p for p in share.iterdir() if p.name.startswith(".musiqd-tmp-")]
        code, _ = d.stop()
        assert code == 0
    finally:
        _unmount_fuse(root)


def _mount_bind(source: Path, target: Path) -> bool:
    return subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _can_mount(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe_source, probe_target = tmp_path / "probe-source", tmp_path / "probe-target"
    probe_source.mkdir()
    probe_target.mkdir()
    if not _mount_bind(probe_source, probe_target):
        return False
    _umount(probe_target)
    return True


@pytest.mark.parametrize("observer", ["native", "poll"])
def test_really_unmounted_share(spawn: Callable[..., Daemon], tmp_path: Path, observer: str) -> None:
    """A root that is a mount point (here a bind mount, as an NFS/SMB share would be) is unmounted and
    mounted again under the running daemon: reported, nothing marked missing, nothing scored again."""
    if not _can_mount(tmp_path):
        pytest.skip("mounting needs root and a mount namespace that allows it")
    store, root = tmp_path / "nas-volume", tmp_path / "mnt" / "photo"
    store.mkdir()
    root.mkdir(parents=True)
    paths = [root / "2024" / f"{i}.jpg" for i in range(3)]
    (store / "2024").mkdir()
    for i, path in enumerate(paths):
        (store / path.relative_to(root)).write_bytes(photo_bytes(1200 + i))
    assert _mount_bind(store, root)
    try:
        config = write_config(tmp_path / "config.toml", [root], tmp_path / "index.sqlite3", observer=observer)
        d = spawn(tmp_path, config).start()
        before = wait_state(d.db, paths)
        time.sleep(SETTLE)
        _umount(root)
        assert not any(root.iterdir())
        d.wait_log(f"root {root} unavailable")
        assert f"the share mounted at {root} is not mounted" in d.logs() or "is empty" in d.logs()
        time.sleep(SETTLE + 1)
        assert [view(d.db, p) for p in paths] == before  # nothing marked missing
        status: dict[str, object] = {}

        def status_names_the_root() -> bool:
            status.update(json.loads(d.cli("status", "--json").stdout))
            return f"root {root}: " in str(status["message"])

        wait_until(status_names_the_root, "status naming the unavailable root", timeout=30)
        assert status["running"] is True
        assert _mount_bind(store, root)
        d.wait_log(f"root {root} is available again", timeout=60)
        time.sleep(SETTLE)
        assert [view(d.db, p) for p in paths] == before  # and nothing scored again
        code, _ = d.stop()
        assert code == 0
    finally:
        _umount(root)


def test_inotify_instance_limit_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel's limit on inotify instances, reached for real: the root is polled, and the log says how
    to raise the limit."""
    import ctypes
    import errno
    import resource

    from musiq_daemon.daemon.watch import INOTIFY_LIMIT_MESSAGE, RootWatcher, Settler
    from musiq_daemon.discover import PathFilter

    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        pytest.skip("no /proc/sys/fs/inotify/max_user_instances")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit > 4096 or (hard != resource.RLIM_INFINITY and hard < limit + 256):
        pytest.skip(f"max_user_instances is {limit}: too many descriptors to exhaust it here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit + 256), hard))
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    found: list[tuple[Path, str | None]] = []
    settler = Settler(lambda p, h: found.append((p, h)), lambda f, d: None, lambda p, i: False,
                      quiet_period=0.2, max_wait=5.0)  # fmt: skip
    settler.start()
    root = tmp_path / "photos"
    root.mkdir()
    watcher = None
    try:
        while len(held) <= limit:
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                assert ctypes.get_errno() == errno.EMFILE, os.strerror(ctypes.get_errno())
                break
            held.append(fd)
        else:
            pytest.skip("the inotify instance limit was not reached")
        with caplog.at_level(logging.WARNING, logger="musiqd.watch"):
            watcher = RootWatcher.start(
                root, setting="native", poll_interval=0.2, path_filter=PathFilter.of(Config(roots=(root,))),
                settler=settler,
            )  # fmt: skip
        assert (watcher.mode, watcher.reason) == ("poll", "inotify limit reached")
        assert [r.getMessage() for r in caplog.records] == [f"{root}: {INOTIFY_LIMIT_MESSAGE}"]
    finally:
        for fd in held:
            os.close(fd)
    try:
        (root / "new.jpg").write_bytes(photo_bytes(1300))  # the polling observer sees it
        wait_until(lambda: bool(found), "the new photo, through polling", timeout=30)
        assert found[0][0] == root / "new.jpg" and found[0][1] is not None
    finally:
        watcher.stop()
        watcher.join(5)
        settler.stop()
        settler.join(5)


# --- the parts, in process ---------------------------------------------------------------------------------


def test_unavailable_root_is_skipped_not_marked_missing(tmp_path: Path) -> None:
    root = tmp_path / "share"
    (root / "2024").mkdir(parents=True)
    for i in range(3):
        (root / "2024" / f"{i}.jpg").write_bytes(photo_bytes(i))
    db = open_index(str(tmp_path / "i.sqlite3"))
    config = Config(roots=(root,), quiet_period=0.0)
    assert scan_root(db, root, config).new == 3
    shutil.move(root / "2024", tmp_path / "elsewhere")  # the share's content is gone: unmounted
    result = scan_root(db, root, config)
    assert result.unavailable is not None and result.missing == 0
    assert "unavailable: skipped" in result.summary()
    root.rmdir()  # the mount point itself is gone
    assert scan_root(db, root, config).unavailable is not None
    (tmp_path / "elsewhere").rename(tmp_path / "moved")
    root.mkdir()
    (tmp_path / "moved").rename(root / "2024")
    result = scan_root(db, root, config)
    assert (result.unavailable, result.missing, result.new, result.unchanged) == (None, 0, 0, 3)
    (root / "2024" / "0.jpg").unlink()
    assert scan_root(db, root, config).missing == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Photo)) == 3  # never deleted
        assert ingest_file(s, root / "2024" / "1.jpg", roots=[root], models=["koniq"]) == "unchanged"
    db.close()


def test_observer_choice_from_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "nas:/volume1/photo /mnt/photo nfs4 rw 0 0\n"
        "//nas/share /mnt/smb\\040share cifs rw 0 0\n"
        "sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0\n"
        "/dev/sdb1 /mnt/usb fuseblk rw 0 0\n"
    )
    table = MountTable.read(mounts)
    assert choose_observer(Path("/home/me/Pictures"), "auto", table)[0] == "native"
    assert choose_observer(Path("/mnt/photo/2024"), "auto", table)[0] == "poll"
    assert choose_observer(Path("/mnt/smb share/x"), "auto", table)[0] == "poll"
    assert choose_observer(Path("/mnt/remote"), "auto", table)[0] == "poll"
    assert choose_observer(Path("/mnt/usb"), "auto", table)[0] == "native"
    assert choose_observer(Path("/mnt/photo"), "native", table)[0] == "native"
    assert choose_observer(Path("/home"), "poll", table)[0] == "poll"


def test_instance_lock_and_sd_notify(tmp_path: Path) -> None:
    """One watcher per root: a second daemon on the same root is refused, on another root of the same
    index it is not (workers score the shared queue)."""
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    a, b = tmp_path / "a", tmp_path / "b"
    lock = RootLocks.acquire(url, [a])
    with pytest.raises(
        AlreadyRunningError, match=rf"already watches {a} with the index {url} \(pid {os.getpid()}\)"
    ):
        RootLocks.acquire(url, [b, a])
    other = RootLocks.acquire(url, [b])  # the failed attempt let go of b
    assert (
        daemon_running(url, [a])
        and daemon_running(url, [b])
        and daemon_running(url, [tmp_path / "c"]) is None
    )
    lock.release()
    other.release()
    assert daemon_running(url, [a]) is False
    RootLocks.acquire(url, [a, b]).release()  # free again
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert receiver.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})
    receiver.close()


PG_URL = os.environ.get("MUSIQD_TEST_DATABASE_URL")


@pytest.mark.skipif(
    PG_URL is None, reason="needs PostgreSQL: set MUSIQD_TEST_DATABASE_URL (.ci/run starts one)"
)
def test_one_watcher_two_workers_one_killed_on_postgresql(
    spawn: Callable[..., Daemon], env: dict[str, str], tmp_path: Path
) -> None:
    """The daemon watches and scores; two `musiqd worker` processes help, one of them seeing the photos
    under another path (--path-map). One worker is killed -9 halfway: its photos go to the others, every
    photo is scored exactly once, none fails, and both surviving processes did work."""
    from conftest import reset_postgres

    assert PG_URL is not None
    reset_postgres(PG_URL)
    root = tmp_path / "photos"
    root.mkdir()
    paths = []
    for i in range(300):
        path = root / f"{i // 100}" / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(photo_bytes(3000 + i))
        paths.append(path)
    view = tmp_path / "mnt" / "nas-photos"  # the same share, mounted elsewhere on the helper machine
    view.parent.mkdir()
    view.symlink_to(root, target_is_directory=True)
    # retries = 1: the kill below may find the doomed worker with a single photo in flight, and with no
    # retries at all that photo would rightly be failed (a photo alone in flight at a crash is the suspect).
    config = write_config(
        tmp_path / "config.toml", [root], tmp_path / "unused.sqlite3", observer="native", retries=1
    )
    config.write_text(
        config.read_text().replace(f'database = "{tmp_path / "unused.sqlite3"}"', f'database = "{PG_URL}"')
    )
    daemon = spawn(tmp_path, config).start()

    def worker(name: str, *options: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "musiq_daemon", "worker", "--config", str(config), *options],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )  # fmt: skip

    mapped = worker("mapped", "--path-map", f"{root}={view}")
    doomed = worker("doomed")
    db = open_index(PG_URL)
    try:

        def done() -> int:
            with db.session() as s:
                return s.scalar(select(func.count()).select_from(Job).where(Job.state == "done")) or 0

        wait_until(lambda: done() >= 100, "a third of the photos scored", timeout=120.0)
        doomed.kill()  # SIGKILL, halfway
        doomed.wait(10)
        with db.session() as s:
            orphans = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.state == "running", Job.lease_owner.like(f"%:{doomed.pid}:%"))
            )
        wait_until(lambda: done() == 300, "every photo scored", timeout=180.0)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Job).where(Job.state != "done")) == 0
            per_photo = s.execute(select(Score.photo_id, func.count()).group_by(Score.photo_id)).all()
            assert len(per_photo) == 300 and {count for _, count in per_photo} == {1}
            roots = set(s.scalars(select(Photo.root).distinct()))
            assert roots == {encode_path(root)}  # the mapped worker recorded the watcher's paths
            rows = {w.id: w for w in s.scalars(select(WorkerRow))}
        by_pid = {w.pid: w for w in rows.values()}
        assert by_pid[mapped.pid].done > 0 and by_pid[mapped.pid].path_map == f"{root}={view}"
        assert by_pid[daemon.proc.pid].done > 0 if daemon.proc else False
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("mapped", "doomed")}
        logs["daemon"] = daemon.logs()
        scored = {
            name: text.count(f"INFO scored {root}/") for name, text in logs.items()
        }  # the index's paths
        # Each did work; no photo twice (a kill between a commit and its log line may hide one).
        assert 299 <= sum(scored.values()) <= 300 and all(scored.values()), scored
        if orphans:  # what the killed worker had in flight was taken back by the others
            assert "from a worker that is gone" in logs["mapped"] + logs["daemon"]
        status = json.loads(daemon.cli("status", "--json").stdout)
        live = {(w["pid"], w["kind"]) for w in status["workers"]}
        assert (mapped.pid, "worker") in live and (doomed.pid, "worker") not in live
    finally:
        for process in (mapped, doomed):
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        db.close()
    code, _ = daemon.stop()
    assert code == 0


@pytest.mark.skipif(
    PG_URL is None, reason="needs PostgreSQL: set MUSIQD_TEST_DATABASE_URL (.ci/run starts one)"
)
def test_one_watcher_per_root_across_machines_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines (here: two data folders, so no shared lock file) sharing a PostgreSQL index: the
    server's advisory lock keeps a second watcher off a root the first watches, not off another root."""
    assert PG_URL is not None
    root, other = tmp_path / "photos", tmp_path / "more"
    monkeypatch.setenv("MUSIQD_DATA_DIR", str(tmp_path / "nas"))
    first = RootLocks.acquire(PG_URL, [root])
    try:
        monkeypatch.setenv("MUSIQD_DATA_DIR", str(tmp_path / "desktop"))
        with pytest.raises(AlreadyRunningError, match="on this or another machine"):
            RootLocks.acquire(PG_URL, [root])
        RootLocks.acquire(PG_URL, [other]).release()
    finally:
        first.release()
    RootLocks.acquire(PG_URL, [root]).release()  # the first one's session ended: free again


def test_the_daemon_groups_bursts_as_photos_arrive(
    spawn: Callable[..., Daemon], env: dict[str, str], tmp_path: Path
) -> None:
    """Photos of a burst copied into a watched root are grouped once scored, without `musiqd cull`. Copies
    of them elsewhere, scored into the same index by `musiqd score`, are not the daemon's: never grouped
    with its photos, never written."""
    from imagegen import camera_exif, scene
    from PIL import Image, ImageFilter

    from musiq_daemon.index.models import Burst

    root, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    start = datetime(2024, 5, 1, 10, 0, 1)
    base = Image.fromarray(scene(900, 600, seed=3))
    frames = [base.filter(ImageFilter.GaussianBlur(r)) if r else base for r in (0, 1, 3, 6)]
    for i, frame in enumerate(frames):
        frame.save(
            elsewhere / f"BURST_{i}.JPG", quality=90, exif=camera_exif(taken=start + timedelta(seconds=i))
        )
    index = tmp_path / "index.sqlite3"
    scored = subprocess.run(
        [sys.executable, "-m", "musiq_daemon", "score", str(elsewhere), "--write", "--db", str(index)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    untouched = {p: p.read_bytes() for p in elsewhere.iterdir()}
    config = write_config(tmp_path / "config.toml", [root], index, observer="native")
    d = spawn(tmp_path, config).start()
    paths = []
    for i, frame in enumerate(frames):
        paths.append(root / f"BURST_{i}.JPG")
        frame.save(paths[-1], quality=90, exif=camera_exif(taken=start + timedelta(seconds=i)))
    paths.append(root / "OTHER.JPG")
    other = Image.fromarray(scene(900, 600, seed=5)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other.save(paths[-1], quality=90, exif=camera_exif(taken=start + timedelta(seconds=2)))
    wait_state(d.db, paths)

    def grouped() -> bool:
        with d.db.session() as s:
            return s.scalar(select(func.count()).select_from(Burst)) == 1

    wait_until(grouped, "the burst to be grouped", timeout=60.0)
    with d.db.session() as s:
        burst = s.scalars(select(Burst)).one()
        members = set(s.scalars(select(Photo.root).where(Photo.burst_id == burst.id)))
        names = set(s.scalars(select(Photo.rel_path).where(Photo.burst_id == burst.id)))
        best = s.scalar(select(Photo.rel_path).where(Photo.id == burst.best_photo_id))
        best_id = burst.best_photo_id
    assert names == {f"BURST_{i}.JPG" for i in range(4)} and best in names and burst.size == 4
    assert members == {encode_path(root)}  # the copies elsewhere are not the daemon's

    # The best gets MUSIQ|best-of-burst (where its score is, embedded) and nothing else is written again.
    marked = root / best

    def keyword_written() -> bool:
        with d.db.session() as s:
            return s.scalar(select(Photo.best_keyword).where(Photo.id == best_id)) == "added"

    wait_until(keyword_written, "the best photo to be marked", timeout=60.0)  # once settled: 10 s
    read = ["exiftool", "-j", "-XMP-lr:HierarchicalSubject", str(marked)]
    tags = json.loads(subprocess.run(read, capture_output=True, text=True, check=True).stdout)[0]
    tags = tags["HierarchicalSubject"]
    assert "MUSIQ|best-of-burst" in tags
    others = [p for p in paths if p != marked]
    before = {p: p.read_bytes() for p in others}
    time.sleep(3 * QUIET)  # the watcher saw musiqd's own write: no new job, features kept
    with d.db.session() as s:
        row = s.scalars(select(Photo).where(Photo.id == best_id)).one()
        assert (row.size, row.mtime_ns) == (marked.stat().st_size, marked.stat().st_mtime_ns)
        assert row.phash is not None and row.burst_id == burst.id
        assert s.scalar(select(func.count()).select_from(Job).where(Job.photo_id == row.id)) == 1
    assert {p: p.read_bytes() for p in others} == before
    assert {p: p.read_bytes() for p in elsewhere.iterdir()} == untouched
    code, _ = d.stop()
    assert code == 0
