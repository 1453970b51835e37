"""The web gallery on a large index: time to serve a page of 100 photos (HTML: query, count, histogram,
template), in-process through Starlette's test client, median of --repeats. Target (issue 14): a page of
100 photos from an index of 100,000 in <= 200 ms.

    python benchmarks/bench_web.py [--photos 100000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import build
from common import StealMeter, machine
from starlette.testclient import TestClient

from musiq_daemon.web.app import create_app

PAGES = [
    ("first page, best first", "/"),
    ("page 500 by its next link", "KEYSET"),
    ("page 500 typed in (?page=500)", "/?page=500"),
    ("scores 4 to 5, newest first", "/?min=4&max=5&sort=date"),
    ("under a folder, worst first", "/?under=/volume1/photo/2010&sort=score%2B"),
    ("best of each burst", "/?best=1"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index.sqlite3"
        started = time.perf_counter()
        build(index, args.photos)
        print(f"machine: {machine()}")
        print(f"index of {args.photos:,} scored photos built in {time.perf_counter() - started:.1f} s")
        print(f"{'page (100 photos)':<32}{'median ms':>10}{'max ms':>8}{'steal':>7}  target: <= 200 ms")
        from musiq_daemon.index.queries import ScoreQuery, run_query
        from musiq_daemon.index.reader import open_reader

        reader = open_reader(str(index))
        (anchor,) = run_query(reader, ScoreQuery(model="koniq", limit=1, offset=499 * 100 - 1))
        reader.close()
        keyset = f"/?page=500&after={anchor.score!r}:{anchor.photo_id}"  # what page 499's next link says
        with TestClient(create_app(str(index), thumbs=Path(tmp) / "thumbs")) as client:
            for label, target in PAGES:
                url = keyset if target == "KEYSET" else target
                steal = StealMeter()
                times = []
                for _ in range(args.repeats + 1):
                    begin = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - begin) * 1000)
                    assert response.status_code == 200, response.text[:200]
                times = times[1:]  # the first warms SQLite's page cache
                print(f"{label:<32}{statistics.median(times):>10.1f}{max(times):>8.1f}{steal.text():>7}")


if __name__ == "__main__":
    main()
