"""The index: schema = migrations, every query option and output format, errors, unicode and odd names.

Runs on SQLite always, and also on PostgreSQL when MUSIQD_TEST_DATABASE_URL is set (.ci/run does that).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from musiq_daemon.api import ScoreRecord
from musiq_daemon.errors import IndexDatabaseError, UsageError
from musiq_daemon.index import IndexDB, ScoreQuery, iter_paths, open_index, open_reader, run_query, stats
from musiq_daemon.index.db import _alembic_config
from musiq_daemon.index.models import Base, Job, Photo, Score
from musiq_daemon.index.paths import decode_path, encode_path
from musiq_daemon.index.reader import EngineReader, SqliteReader
from musiq_daemon.index.records import record_score, upsert_photo

ODD = os.fsdecode(b"odd \xff\xfe name %41.jpg")  # not valid UTF-8, and a literal %


def make_record(model: str, score: float, version: str = "abcdef012345") -> ScoreRecord:
    scale = (1.0, 10.0) if model == "ava" else (1.0, 5.0)
    return ScoreRecord(
        score=score, raw=score if model == "ava" else (score - 1) * 25, model_id=model, model_version=version,
        variant="dynamic-int8", model_sha256="0" * 64, scale_min=scale[0], scale_max=scale[1],
        resolution_policy="max_side=1024", device="cpu", num_tokens=385, scored_size=(384, 512),
        stored_size=(512, 384), source="full",
        format="JPEG", orientation_applied=True, scored_at=datetime.now(UTC).isoformat(),
        timings={"decode": 0.01, "preprocess": 0.01, "inference": 0.1},
    )  # fmt: skip


@pytest.fixture
def library(tmp_path: Path, db_url: str) -> Iterator[tuple[IndexDB, Path]]:
    """Photos on disk under a root, scored by koniq (and some by ava), one failed, one unscored, one gone."""
    root = tmp_path / "Photos"
    (root / "2023" / "trip").mkdir(parents=True)
    (root / "2024").mkdir()
    files = {
        "2023/a.jpg": 4.6, "2023/b.jpg": 4.0, "2023/trip/c.jpg": 3.1, "2024/d.jpg": 2.2,
        "2024/ünïcødé 写真.jpg": 4.0, f"2024/{ODD}": 1.5,
    }  # fmt: skip
    db = open_index(db_url)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    with db.session() as s:
        for i, (rel, score) in enumerate(files.items()):
            path = root / rel
            path.write_bytes(b"jpeg" * (i + 1))
            photo = upsert_photo(s, path, roots=[root], fmt="JPEG", size_hw=(2000, 3000),
                                 taken_at=base + timedelta(days=30 * i))  # fmt: skip
            record_score(s, photo, make_record("koniq", score))
            if i % 2 == 0:
                record_score(s, photo, make_record("ava", 2 * score))
        (root / "2024" / "e.jpg").write_bytes(b"new")
        upsert_photo(s, root / "2024" / "e.jpg", roots=[root], taken_at=base)  # not scored yet
        (root / "2024" / "f.jpg").write_bytes(b"broken")
        broken = upsert_photo(s, root / "2024" / "f.jpg", roots=[root], taken_at=base)
        now = datetime.now(UTC)
        s.add(Job(photo_id=broken.id, model_id="koniq", state="failed", attempts=3,
                  last_error="f.jpg is truncated", created_at=now, updated_at=now))  # fmt: skip
        gone = upsert_photo(s, root / "2023" / "a.jpg", roots=[root])
        gone_copy = root / "2023" / "gone.jpg"
        gone_copy.write_bytes(b"x")
        vanished = upsert_photo(s, gone_copy, roots=[root])
        record_score(s, vanished, make_record("koniq", 5.0))
        vanished.missing_since = now
        assert gone.id
    yield db, root
    db.close()


def paths(rows: object, root: Path) -> list[str]:
    return [str(Path(r.path).relative_to(root)) for r in rows]  # type: ignore[attr-defined]


def test_schema_from_migrations_equals_models(db_url: str) -> None:
    db = open_index(db_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.close()
    assert diff == []


def test_sqlite_settings(tmp_path: Path) -> None:
    db = open_index(str(tmp_path / "i.sqlite3"))
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10000
    db.close()


def test_path_encoding_round_trips() -> None:
    for name in ("a.jpg", "ü 写真.jpg", ODD, "%", "100%25.jpg", os.fsdecode(b"\xc3"), "a\\b"):
        encoded = encode_path(name)
        encoded.encode("utf-8")  # valid text for every database
        assert decode_path(encoded) == name


def test_min_max_inclusive_and_sorted(library: tuple[IndexDB, Path]) -> None:
    db, root = library
    rows = list(run_query(db, ScoreQuery(model="koniq", min_score=4.0)))
    assert [r.score for r in rows] == [4.6, 4.0, 4.0]
    assert set(paths(rows, root)) == {"2023/a.jpg", "2023/b.jpg", "2024/ünïcødé 写真.jpg"}
    rows = list(run_query(db, ScoreQuery(model="koniq", min_score=2.2, max_score=4.0, sort="score+")))
    assert [r.score for r in rows] == [2.2, 3.1, 4.0, 4.0]
    assert all(r.model == "koniq" and r.variant == "dynamic-int8" for r in rows)


def test_sort_path_and_date_and_limit(library: tuple[IndexDB, Path]) -> None:
    db, root = library
    by_path = paths(run_query(db, ScoreQuery(model="koniq", sort="path")), root)
    assert by_path == sorted(by_path, key=lambda p: encode_path(p))
    assert paths(run_query(db, ScoreQuery(model="koniq", sort="path-")), root) == by_path[::-1]
    newest = list(run_query(db, ScoreQuery(model="koniq", sort="date", limit=2)))
    assert len(newest) == 2 and newest[0].date is not None and newest[1].date is not None
    assert newest[0].date > newest[1].date
    oldest = next(iter(run_query(db, ScoreQuery(model="koniq", sort="date+", limit=1))))
    assert oldest.date is not None and oldest.date <= newest[1].date


def test_under_absolute_relative_and_odd_names(
    library: tuple[IndexDB, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, root = library
    assert set(paths(run_query(db, ScoreQuery(model="koniq", under=root / "2023")), root)) == {
        "2023/a.jpg", "2023/b.jpg", "2023/trip/c.jpg",
    }  # fmt: skip
    monkeypatch.chdir(root)
    assert paths(run_query(db, ScoreQuery(model="koniq", under=Path("2023/trip"))), root) == [
        "2023/trip/c.jpg"
    ]
    assert len(list(run_query(db, ScoreQuery(model="koniq", under=root.parent)))) == 6
    assert list(run_query(db, ScoreQuery(model="koniq", under=root / "20"))) == []  # a prefix is not a folder
    odd = [r for r in run_query(db, ScoreQuery(model="koniq", under=root / "2024")) if r.score == 1.5]
    assert odd[0].path == str(root / "2024" / ODD)
    assert Path(odd[0].path).exists()


def test_since_until(library: tuple[IndexDB, Path]) -> None:
    db, _ = library
    since = datetime(2024, 3, 1, tzinfo=UTC)
    until = datetime(2024, 6, 30, tzinfo=UTC)
    rows = list(run_query(db, ScoreQuery(model="koniq", since=since, until=until)))
    assert rows and all(r.date is not None and since <= r.date <= until for r in rows)


def test_missing_failed_and_per_model(library: tuple[IndexDB, Path]) -> None:
    db, root = library
    assert set(paths(run_query(db, ScoreQuery(model="koniq", missing=True)), root)) == {
        "2024/e.jpg",
        "2024/f.jpg",
    }
    failed = list(run_query(db, ScoreQuery(model="koniq", failed=True)))
    assert paths(failed, root) == ["2024/f.jpg"] and failed[0].error == "f.jpg is truncated"
    ava = list(run_query(db, ScoreQuery(model="ava")))
    assert len(ava) == 3 and all(r.score is not None and r.score > 2 for r in ava)


def test_rescore_replaces_latest(library: tuple[IndexDB, Path]) -> None:
    db, root = library
    with db.session() as s:
        photo = upsert_photo(s, root / "2023" / "b.jpg", roots=[root])
        record_score(s, photo, make_record("koniq", 1.2, version="newversion01"))
    rows = [r for r in run_query(db, ScoreQuery(model="koniq")) if r.path.endswith("b.jpg")]
    assert [(r.score, r.model_version) for r in rows] == [(1.2, "newversion01")]


def test_stats(library: tuple[IndexDB, Path]) -> None:
    db, _ = library
    s = stats(db)
    assert s.photos == 8 and s.vanished == 1
    koniq = next(m for m in s.models if m.model == "koniq")
    assert koniq.scored == 6 and koniq.failed == 1 and koniq.pending == 0
    assert sum(c for *_, c in koniq.histogram) == 6 and koniq.scale == (1.0, 5.0)
    assert koniq.histogram[14][:2] == (4.5, 4.75) and koniq.histogram[14][2] == 1  # 4.6
    assert koniq.histogram[-1][2] == 0  # the 5.0 of the vanished photo does not count


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (ScoreQuery(model="koniq", min_score=4, max_score=3), "swap"),
        (ScoreQuery(model="koniq", missing=True, failed=True), "exclude"),
        (ScoreQuery(model="koniq", sort="size"), "unknown sort"),
        (ScoreQuery(model="koniq", limit=0), "--limit"),
        (ScoreQuery(model="koniq", missing=True, min_score=3), "--missing"),
    ],
)
def test_bad_queries(query: ScoreQuery, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        query.validate()


def test_unreadable_and_newer_databases(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexDatabaseError, match="cannot open the index"):
        open_index(str(junk))
    newer = tmp_path / "newer.sqlite3"
    open_index(str(newer)).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(IndexDatabaseError, match="newer musiqd"):
        open_index(str(newer))
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE photos (x INTEGER)")
    with pytest.raises(IndexDatabaseError, match="another program"):
        open_index(str(foreign))


# --- the CLI, as users run it -------------------------------------------------------------------------


def musiqd(args: list[str], db: IndexDB, rc: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "musiq_daemon", *args, "--db", db.url], capture_output=True, text=True,
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == rc, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_cli_formats(library: tuple[IndexDB, Path]) -> None:
    db, root = library
    rows = json.loads(musiqd(["query", "--min", "4", "--format", "json"], db).stdout)
    assert [r["score"] for r in rows] == [4.6, 4.0, 4.0]
    assert set(rows[0]) == {
        "path", "score", "raw", "model", "model_version", "variant", "resolution_policy", "scored_at", "date",
        "width", "height", "format", "content_hash", "error", "burst",
    }  # fmt: skip
    jsonl = [json.loads(x) for x in musiqd(["query", "--min", "4", "-f", "jsonl"], db).stdout.splitlines()]
    assert jsonl == rows
    table = list(csv.DictReader(io.StringIO(musiqd(["query", "--min", "4", "-f", "csv"], db).stdout)))
    assert [float(r["score"]) for r in table] == [4.6, 4.0, 4.0]
    for fmt, sep in (("paths", b"\n"), ("paths0", b"\0")):
        argv = ["query", "--max", "2.2", "-f", fmt, "--sort", "path", "--db", db.url]
        raw = subprocess.run(
            [sys.executable, "-m", "musiq_daemon", *argv], capture_output=True, check=True
        ).stdout
        # Exact bytes of the file names, also the one that is not valid UTF-8 (ready for xargs -0).
        expected = [os.fsencode(root / "2024" / "d.jpg"), os.fsencode(root / "2024" / ODD)]
        assert raw.split(sep)[:-1] == expected
    odd_json = json.loads(musiqd(["query", "--max", "1.5", "-f", "json"], db).stdout)
    assert os.fsencode(odd_json[0]["path"]) == os.fsencode(root / "2024" / ODD)
    out = musiqd(["query", "--min", "4"], db)
    assert "4.60" in out.stdout and "ünïcødé" in out.stdout and "3 photos" in out.stderr
    failed = musiqd(["query", "--failed"], db).stdout
    assert "failed" in failed and "truncated" in failed


def test_cli_stats_and_db_commands(library: tuple[IndexDB, Path]) -> None:
    db, _ = library
    out = musiqd(["stats"], db).stdout
    assert "photos: 8" in out and "koniq" in out and "scored 6" in out and "failed 1" in out
    from musiq_daemon.index.db import head_revision

    assert f"schema {head_revision()}; this musiqd: {head_revision()}" in musiqd(["db", "current"], db).stdout
    assert "up to date" in musiqd(["db", "upgrade"], db).stdout


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        (["query", "--model", "nope"], 2, "unknown model"),
        (["query", "--min", "4", "--max", "3"], 2, "swap"),
        (["query", "--format", "xml"], 2, "unknown format"),
        (["query", "--since", "last tuesday"], 2, "not a date"),
        (["query", "--sort", "size"], 2, "unknown sort"),
    ],
)
def test_cli_bad_input(library: tuple[IndexDB, Path], args: list[str], rc: int, message: str) -> None:
    db, _ = library
    err = musiqd(args, db, rc=rc).stderr.strip()
    assert err.startswith("musiqd: error:") and message in err and "\n" not in err


def test_cli_unreadable_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"garbage" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "musiq_daemon", "query", "--db", str(junk)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        result.returncode == 8
        and "cannot open the index" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_fast_revision_check_agrees_with_alembic() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from musiq_daemon.index.location import known_revisions, migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(config)
    head, known = known_revisions()
    assert head == script.get_current_head()
    assert known == {rev.revision for rev in script.walk_revisions()}


def test_one_row_per_photo_whichever_split_saw_it_first(tmp_path: Path, db_url: str) -> None:
    """`musiqd score` on a sub-folder (no root: the folder is the key) and the daemon on the root above it
    name the same photo: one row, keyed by the outermost root, whichever came first."""
    root = tmp_path / "Photos"
    (root / "2024" / "trip").mkdir(parents=True)
    first, second = root / "2024" / "trip" / "a.jpg", root / "2024" / "b.jpg"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    db = open_index(db_url)
    try:
        with db.session() as session:
            by_folder = upsert_photo(session, first)  # score first
            record_score(session, by_folder, make_record("koniq", 3.0))
            by_root = upsert_photo(session, second, roots=[root])  # watch first
        with db.session() as session:
            assert upsert_photo(session, first, roots=[root]).id == by_folder.id  # then watch
            assert upsert_photo(session, second).id == by_root.id  # then score
        rows = list(run_query(db, ScoreQuery(model="koniq")))
        assert [r.path for r in rows] == [str(first)]
        with db.session() as session:
            keys = sorted(session.execute(select(Photo.root, Photo.rel_path)).all())
        assert keys == [(str(root), "2024/b.jpg"), (str(root), "2024/trip/a.jpg")]
    finally:
        db.close()


def test_migration_merges_rows_of_one_photo(tmp_path: Path) -> None:
    """An index written before one identity per photo: two rows for one file (a folder split from
    `musiqd score`, a root split from the daemon) become one, with both rows' scores."""
    from alembic import command

    from musiq_daemon.index.db import _make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = _make_engine(url)
    command.upgrade(_alembic_config(engine), "0002")
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        insert_photo = text(
            "INSERT INTO photos (id, root, rel_path, size, mtime_ns, first_seen, last_seen) "
            "VALUES (:id, :root, :rel, 1, 1, :t, :t)"
        )
        conn.execute(insert_photo, {"id": 1, "root": "/lib/2024", "rel": "a.jpg", "t": t0})
        conn.execute(insert_photo, {"id": 2, "root": "/lib", "rel": "2024/a.jpg", "t": t0})
        conn.execute(insert_photo, {"id": 3, "root": "/lib", "rel": "2024/b.jpg", "t": t0})
        insert_score = text(
            "INSERT INTO scores (photo_id, model_id, model_version, variant, is_latest, score, raw, "
            "scale_min, scale_max, resolution_policy, device, num_tokens, duration_s, scored_at) "
            "VALUES (:p, :m, :v, 'fp32', 1, :s, 0, 1, 5, 'full', 'cpu', 1, 0, :t)"
        )
        conn.execute(insert_score, {"p": 1, "m": "koniq", "v": "v1", "s": 3.1, "t": t0 + timedelta(days=2)})
        conn.execute(insert_score, {"p": 2, "m": "koniq", "v": "v1", "s": 2.9, "t": t0 + timedelta(days=1)})
        conn.execute(insert_score, {"p": 1, "m": "ava", "v": "v9", "s": 5.5, "t": t0})
    engine.dispose()

    db = open_index(url)
    try:
        with db.session() as session:
            photos = session.execute(select(Photo.id, Photo.root, Photo.rel_path).order_by(Photo.id)).all()
            scores = session.execute(
                select(Score.photo_id, Score.model_id, Score.score, Score.is_latest).order_by(Score.model_id)
            ).all()
        assert photos == [(2, "/lib", "2024/a.jpg"), (3, "/lib", "2024/b.jpg")]
        assert scores == [(2, "ava", 5.5, True), (2, "koniq", 3.1, True)]  # the newer koniq score stayed
    finally:
        db.close()


@pytest.mark.parametrize(
    "query",
    [
        ScoreQuery(model="koniq"),
        ScoreQuery(model="koniq", min_score=2.2, max_score=4.0, sort="score+"),
        ScoreQuery(model="koniq", sort="path-", limit=3),
        ScoreQuery(model="koniq", sort="date"),
        ScoreQuery(
            model="koniq",
            since=datetime(2024, 3, 1, tzinfo=UTC),
            until=datetime(2024, 6, 30, 1, 2, 3, 4, tzinfo=UTC),
        ),
        ScoreQuery(model="koniq", missing=True),
        ScoreQuery(model="koniq", failed=True),
        ScoreQuery(model="koniq", include_vanished=True, sort="path"),
        ScoreQuery(model="ava", min_score=5),
    ],
    ids=lambda q: str(q),
)
def test_standard_library_reader_equals_the_engine(library: tuple[IndexDB, Path], query: ScoreQuery) -> None:
    """`musiqd query` reads SQLite with sqlite3 alone: every row, field and order as through SQLAlchemy."""
    db, _root = library
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the standard-library reader is for SQLite files")
    reader = open_reader(db.engine.url.database)
    try:
        assert isinstance(reader, SqliteReader)
        fast = list(run_query(reader, query))
        assert fast == list(run_query(db, query)) and fast
        assert list(iter_paths(reader, query)) == [row.path for row in fast]
        assert all(row.scored_at is None or row.scored_at.tzinfo is UTC for row in fast)
    finally:
        reader.close()


def test_under_on_both_readers(library: tuple[IndexDB, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """--under on the standard-library reader: folders, not prefixes, case-sensitive like the file system."""
    db, root = library
    readers = [db] if db.engine.dialect.name != "sqlite" else [db, open_reader(db.engine.url.database)]
    monkeypatch.chdir(root)
    for source in readers:
        under = {
            folder: sorted(paths(run_query(source, ScoreQuery(model="koniq", under=folder)), root))
            for folder in (root / "2023", Path("2023/trip"), root.parent, root / "20", root.parent / "photos")
        }
        assert under[root / "2023"] == ["2023/a.jpg", "2023/b.jpg", "2023/trip/c.jpg"]
        assert under[Path("2023/trip")] == ["2023/trip/c.jpg"]
        assert len(under[root.parent]) == 6
        assert under[root / "20"] == [] and under[root.parent / "photos"] == []  # "Photos" is the root


def test_query_on_an_older_index_upgrades_it_through_alembic(tmp_path: Path) -> None:
    """The standard-library reader serves only the current schema; an older one is upgraded first."""
    from alembic import command

    path = tmp_path / "old.sqlite3"
    db = open_index(str(path))
    revisions = ScriptDirectory.from_config(_alembic_config()).walk_revisions()
    previous = next(rev.down_revision for rev in revisions)
    assert isinstance(previous, str)
    command.downgrade(_alembic_config(db.engine), previous)
    db.close()
    reader = open_reader(str(path))
    try:
        assert isinstance(reader, EngineReader)  # upgraded through open_index
        assert list(run_query(reader, ScoreQuery(model="koniq"))) == []
    finally:
        reader.close()
    again = open_reader(str(path))
    assert isinstance(again, SqliteReader)
    again.close()


def test_pages_by_offset_are_slices_of_the_whole_result(library: tuple[IndexDB, Path]) -> None:
    """A typed page (OFFSET) of a score sort is read through the scores' index alone, then joined: it must
    be exactly that slice of the whole ordered result, ties, score ranges and vanished photos included."""
    db, _ = library
    for base in (
        ScoreQuery(model="koniq", sort="score-"),
        ScoreQuery(model="koniq", sort="score+"),
        ScoreQuery(model="koniq", sort="score-", min_score=2.0, max_score=4.5),
        ScoreQuery(model="koniq", sort="score-", include_vanished=True),
        ScoreQuery(model="koniq", sort="path"),  # the plain OFFSET form
    ):
        whole = [(r.path, r.score, r.error) for r in run_query(db, base)]
        assert len(whole) >= 4
        for offset in range(1, len(whole)):
            for limit in (1, 2, 3, None):
                page = dataclasses.replace(base, offset=offset, limit=limit)
                rows = [(r.path, r.score, r.error) for r in run_query(db, page)]
                assert rows == whole[offset : None if limit is None else offset + limit], (
                    base,
                    offset,
                    limit,
                )


def test_best_of_burst_lists_one_photo_a_burst_and_all_of_a_burst_without_a_best(
    library: tuple[IndexDB, Path],
) -> None:
    from musiq_daemon.index.models import Burst

    db, root = library
    with db.session() as s:
        ids = {p.rel_path: p.id for p in s.scalars(select(Photo))}
        now = datetime.now(UTC)
        undecided = Burst(size=2, model_id="ava", best_photo_id=None, decided_at=now)  # nothing scored by ava
        decided = Burst(size=2, model_id="koniq", best_photo_id=ids["2024/d.jpg"], decided_at=now)
        s.add_all([undecided, decided])
        s.flush()
        for rel, burst in (("2023/b.jpg", undecided), ("2023/trip/c.jpg", undecided), ("2024/d.jpg", decided),
                           ("2024/ünïcødé 写真.jpg", decided)):  # fmt: skip
            s.get(Photo, ids[rel]).burst_id = burst.id  # type: ignore[union-attr]
    every = set(paths(run_query(db, ScoreQuery(model="koniq")), root))
    best = set(paths(run_query(db, ScoreQuery(model="koniq", best_of_burst=True)), root))
    assert best == every - {"2024/ünïcødé 写真.jpg"}
