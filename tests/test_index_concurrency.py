"""A writer process scoring continuously while queries run: no "database is locked", no partial reads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BACKENDS, PG_URL, reset_postgres

from musiq_daemon.index import ScoreQuery, open_index, run_query, stats

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
