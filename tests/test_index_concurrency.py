"""Processes sharing one index: a writer scoring continuously while queries run (no "database is locked", no
partial reads), and several processes creating one new index at once (one creates it, the others wait)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import BACKENDS, PG_URL, reset_postgres
from sqlalchemy import create_engine, text

from musiq_daemon.errors import IndexDatabaseError
from musiq_daemon.index import ScoreQuery, open_index, run_query, stats
from musiq_daemon.index import db as index_db
from musiq_daemon.index.db import SCHEMA_LOCK_KEY, current_revision, head_revision, schema_lock_file, url_for

BATCH = 5

WRITER = r"""
import random, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_index import make_record
from musiq_daemon.index import open_index
from musiq_daemon.index.records import record_score, upsert_photo

db = open_index(sys.argv[1])
root = Path(sys.argv[2])
deadline = time.monotonic() + float(sys.argv[4])
rng = random.Random(0)
n = 0
while time.monotonic() < deadline:
    # One transaction: BATCH new photos, and BATCH earlier photos re-scored by a new model version
    # (which flips is_latest on their old rows). A reader must see all of it or none of it.
    with db.session() as s:
        for _ in range(5):
            path = root / f"p{n:06d}.jpg"
            path.write_bytes(b"x")
            record_score(s, upsert_photo(s, path, roots=[root]), make_record("koniq", rng.uniform(1, 5)))
            n += 1
        for i in rng.sample(range(n), 5):
            photo = upsert_photo(s, root / f"p{i:06d}.jpg", roots=[root])
            record_score(s, photo, make_record("koniq", rng.uniform(1, 5), version=f"v{n:010d}"))
print(n)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_while_a_writer_writes(tmp_path: Path, backend: str) -> None:
    if backend == "postgresql":
        assert PG_URL is not None
        url = PG_URL
        reset_postgres(url)
    else:
        url = str(tmp_path / "index.sqlite3")
    root = tmp_path / "photos"
    root.mkdir()
    db = open_index(url)  # create the schema before the writer starts
    seconds = 6.0
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(root), str(Path(__file__).parent), str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[int] = []
    cli_reads = 0
    try:
        deadline = time.monotonic() + seconds + 2
        while writer.poll() is None and time.monotonic() < deadline:
            rows = list(run_query(db, ScoreQuery(model="koniq", sort="path")))
            paths = [r.path for r in rows]
            assert len(paths) == len(set(paths)), "a photo appeared twice: a partial re-score was visible"
            assert len(rows) % BATCH == 0, f"{len(rows)} rows: a partial batch was visible"
            assert not seen or len(rows) >= seen[-1]
            seen.append(len(rows))
            s = stats(db)
            assert not s.models or s.models[0].scored % BATCH == 0
            if len(seen) % 5 == 0:  # the real command too, as a user runs it while the daemon writes
                out = subprocess.run(
                    [sys.executable, "-m", "musiq_daemon", "query", "-f", "jsonl", "--db", db.url],
                    capture_output=True, text=True, check=True, timeout=60,
                ).stdout  # fmt: skip
                assert len([json.loads(x) for x in out.splitlines()]) % BATCH == 0
                cli_reads += 1
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
        db.close()
    assert writer.returncode == 0, err
    written = int(out.strip())
    assert "locked" not in err
    assert written >= 10 * BATCH and len(seen) >= 5 and cli_reads >= 1
    final = open_index(url)
    assert len(list(run_query(final, ScoreQuery(model="koniq")))) == written
    final.close()


# --- creating a new index: several processes at the same moment ---------------------------------------------

OPENER = r"""
import json, sys, time
from musiq_daemon.index import open_index
print("ready", flush=True)
for line in sys.stdin:
    url, start = json.loads(line)
    while (left := start - time.time()) > 0:  # all openers start within about a millisecond of each other
        time.sleep(min(left, 0.0005))
    try:
        open_index(url).close()
        print("ok", flush=True)
    except Exception as exc:
        print(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}", flush=True)
"""

OPENERS = 3
ROUNDS = 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_processes_creating_one_new_index_at_once(tmp_path: Path, backend: str) -> None:
    """Each round, OPENERS processes open the same new index at the same moment: every one succeeds (one
    creates the schema, the others wait for it) and the schema is at head. Without the lock around the
    creation, most rounds fail: 'table ... already exists', 'has tables but no musiqd schema version',
    PostgreSQL's 'duplicate key value violates unique constraint', and on SQLite also 'database is locked'
    (two processes switching the new file to WAL at once)."""
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(OPENERS)
    ]
    failures: list[str] = []
    try:
        for opener in openers:  # imports done before the first round, so that the starts coincide
            assert opener.stdout is not None and opener.stdout.readline().strip() == "ready"
        for n in range(ROUNDS):
            if backend == "postgresql":
                assert PG_URL is not None
                url = PG_URL
                reset_postgres(url)
            else:
                url = str(tmp_path / f"index{n}.sqlite3")
            start = time.time() + 0.15
            for opener in openers:
                assert opener.stdin is not None
                opener.stdin.write(json.dumps([url, start]) + "\n")
                opener.stdin.flush()
            answers = [opener.stdout.readline().strip() for opener in openers if opener.stdout is not None]
            failures += [f"round {n}: {answer}" for answer in answers if answer != "ok"]
            db = open_index(url, upgrade_schema=False)
            assert current_revision(db.engine) == head_revision()
            db.close()
    finally:
        for opener in openers:
            if opener.stdin is not None:
                opener.stdin.close()
        for opener in openers:
            try:
                opener.wait(timeout=60)
            except subprocess.TimeoutExpired:
                opener.kill()
                raise
    assert not failures, f"{len(failures)} of {OPENERS * ROUNDS} opens failed:\n" + "\n".join(failures)


@contextmanager
def holding_the_schema_lock(url: str) -> Iterator[None]:
    """Hold the lock a process takes to create or upgrade the index at ``url``, as another process would."""
    path = schema_lock_file(url)
    if path is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def test_a_held_schema_lock_is_waited_for_then_reported(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating an index while another process holds the lock too long: one line saying so, no traceback;
    the index is left as it was (empty). Opening an up-to-date index takes no lock."""
    url = url_for(db_url)
    monkeypatch.setattr(index_db, "BUSY_TIMEOUT_S", 0.5)
    with holding_the_schema_lock(url):
        began = time.monotonic()
        with pytest.raises(IndexDatabaseError) as caught:
            open_index(db_url)
        assert time.monotonic() - began >= 0.5
    message = str(caught.value)
    assert "another musiqd is creating or upgrading the index" in message and "try again" in message
    assert "\n" not in message and caught.value.__context__ is None  # nothing for a traceback to show
    db = open_index(db_url)  # the lock is free again: created now
    db.close()
    with holding_the_schema_lock(url):
        began = time.monotonic()
        db = open_index(db_url)  # up to date: does not wait for the lock
        assert time.monotonic() - began < 0.5 and current_revision(db.engine) == head_revision()
        db.close()


def test_schema_lock_file_and_key() -> None:
    """The SQLite lock file is not the daemon's single-instance lock (``<index>.lock``), which the daemon
    holds while it opens the index; the PostgreSQL key is a fixed, signed 64-bit value."""
    assert schema_lock_file("sqlite:////data/index.sqlite3") == Path("/data/index.sqlite3.schema.lock")
    assert schema_lock_file("sqlite://") is None and schema_lock_file("sqlite:///:memory:") is None
    assert schema_lock_file("postgresql+psycopg://host/db") is None
    assert -(2**63) <= SCHEMA_LOCK_KEY < 2**63
