"""One pipeline for every way a photo gets scored: decoded once, every model, one write, one transaction;
one identity whichever command saw the photo; `score` honours the configuration and skips what is done."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagegen
import pytest
from sqlalchemy import select

from musiq_daemon import api
from musiq_daemon.api import Scorer
from musiq_daemon.daemon import queue
from musiq_daemon.daemon.scan import ingest_file
from musiq_daemon.daemon.worker import Worker
from musiq_daemon.index import IndexDB, ScoreQuery, open_index, run_query
from musiq_daemon.index.models import Photo, Score
from musiq_daemon.index.records import upsert_photo
from musiq_daemon.metadata import writer
from musiq_daemon.metadata.writer import WritePolicy
from musiq_daemon.pipeline import Pipeline

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool builds the test photos")
MUSIQD = [sys.executable, "-m", "musiq_daemon"]


@pytest.fixture(scope="module")
def scorers(models_root: Path) -> dict[str, Scorer]:
    return {model: Scorer(model, "fp32", device="cpu", models_root=models_root) for model in ("koniq", "ava")}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[IndexDB]:
    index = open_index(str(tmp_path / "index.sqlite3"))
    yield index
    index.close()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every decode and every file replacement, counted by wrapping the real functions."""
    calls: dict[str, list[str]] = {"decode": [], "replace": []}
    real_decode, real_replace = api.decode_image, writer.atomic_replace

    def decode(path: Path, **kwargs: Any) -> Any:
        calls["decode"].append(str(path))
        return real_decode(path, **kwargs)

    def replace(path: Path, data: bytes, **kwargs: Any) -> Any:
        calls["replace"].append(str(path))
        return real_replace(path, data, **kwargs)

    monkeypatch.setattr(api, "decode_image", decode)
    monkeypatch.setattr(writer, "atomic_replace", replace)
    return calls


def photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        imagegen.make_photo(folder / f"IMG_{i:04}.jpg", 320, 214, rating=None, seed=i, quality=90)
        for i in range(count)
    ]


def test_two_models_decode_once_and_write_once(
    scorers: dict[str, Scorer], db: IndexDB, tmp_path: Path, counted: dict[str, list[str]]
) -> None:
    paths = photos(tmp_path / "Photos", 3)
    pipeline = Pipeline(scorers, write_policy=WritePolicy(), db=db, roots=[tmp_path / "Photos"])

    outcomes = list(pipeline.run(paths))

    assert [o.ok for o in outcomes] == [True] * 3
    assert sorted(counted["decode"]) == sorted(map(str, paths))  # once each, for both models
    assert sorted(counted["replace"]) == sorted(map(str, paths))  # one write each, both models in it
    for outcome in outcomes:
        assert [r.model_id for r in outcome.records] == ["koniq", "ava"]
        assert outcome.written is not None and outcome.written.changed
    with db.session() as session:
        rows = session.execute(select(Score.photo_id, Score.model_id).where(Score.is_latest)).all()
    assert len(rows) == 6 and len({photo for photo, _ in rows}) == 3
    # Again: everything is already scored, nothing is decoded or written.
    counted["decode"].clear()
    counted["replace"].clear()
    again = list(pipeline.run(paths))
    assert all(o.skipped for o in again) and counted == {"decode": [], "replace": []}


def test_the_worker_takes_a_photo_with_all_its_models(
    scorers: dict[str, Scorer], db: IndexDB, tmp_path: Path, counted: dict[str, list[str]]
) -> None:
    root = tmp_path / "Photos"
    paths = photos(root, 2)
    with db.session() as session:
        for path in paths:
            photo = upsert_photo(session, path, roots=[root])
            for model in scorers:
                queue.enqueue(session, photo.id, model)
    worker = Worker(db, scorers, write_policy=WritePolicy(), retries=1, backoff=0.0)

    outcomes = list(iter(worker.run_once, None))

    assert len(outcomes) == 2 and all(o.result == "done" for o in outcomes)  # one per photo
    assert queue.queue_counts(db)["done"] == 4
    assert sorted(counted["decode"]) == sorted(map(str, paths))
    assert sorted(counted["replace"]) == sorted(map(str, paths))


def run(args: list[str], env: dict[str, str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == rc, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_score_then_watch_and_watch_then_score_is_one_row(
    env: dict[str, str], tmp_path: Path, models_root: Path
) -> None:
    root = tmp_path / "Photos"
    first = photos(root / "2024" / "trip", 1)[0]  # scored first, by folder
    second = photos(root / "2023", 1)[0]  # seen by the daemon first
    index = tmp_path / "index.sqlite3"
    db = open_index(str(index))
    try:
        with db.session() as session:
            upsert_photo(session, second, roots=[root])
    finally:
        db.close()
    run(
        ["score", str(root / "2024" / "trip"), str(root / "2023"), "--variant", "fp32", "--db", str(index)],
        env,
    )
    db = open_index(str(index))
    try:
        with db.session() as session:
            assert ingest_file(session, first, roots=[root], models=["koniq"]) in ("unchanged", "own-write")
            keys = sorted(session.execute(select(Photo.root, Photo.rel_path)).all())
        rows = list(run_query(db, ScoreQuery(model="koniq")))
    finally:
        db.close()
    assert keys == [(str(root), "2023/IMG_0000.jpg"), (str(root), "2024/trip/IMG_0000.jpg")]
    assert sorted(r.path for r in rows) == sorted([str(first), str(second)])  # each once


def test_score_honours_the_configuration_and_skips_what_is_scored(
    env: dict[str, str], tmp_path: Path
) -> None:
    paths = photos(tmp_path / "Photos", 2)
    before = [p.read_bytes() for p in paths]
    config = tmp_path / "config.toml"
    config.write_text('models = ["koniq", "ava"]\nvariant = "fp32"\n[write]\nmode = "index-only"\n')
    index = str(tmp_path / "index.sqlite3")

    first = run(
        ["score", "--config", str(config), "--write", "--json", "--db", index, str(tmp_path / "Photos")], env
    )

    assert [p.read_bytes() for p in paths] == before  # index-only: the photos are untouched
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    names = ["IMG_0000.jpg", "IMG_0001.jpg"]
    assert sorted((r["model_id"], Path(r["path"]).name) for r in rows) == [
        (model, name) for model in ("ava", "koniq") for name in names
    ]
    assert all(r["written"]["target"] == "none" for r in rows)
    assert first.stderr.splitlines()[-1].startswith("musiqd: 2 scored, 0 skipped")

    second = run(["score", "--config", str(config), "--write", "--db", index, str(tmp_path / "Photos")], env)

    assert second.stdout == ""  # no rows, and no table header above none
    assert second.stderr.splitlines()[-1].startswith("musiqd: 0 scored, 2 skipped")
