"""Commands that score nothing start light: no model runtime, image code, metadata writer or Alembic.

Each command runs as a real ``musiqd`` process under ``python -X importtime``, which reports every module
the process imports; the test reads that list. (How long start-up takes is for
``benchmarks/bench_startup.py``: tests never time things.)
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from musiq_daemon.index import open_index
from musiq_daemon.index.records import record_score, upsert_photo
from musiq_daemon.records import ScoreRecord

MUSIQD = [sys.executable, "-m", "musiq_daemon"]
REPORTED = [sys.executable, "-X", "importtime", "-m", "musiq_daemon"]

#: What only scoring, converting, writing metadata or migrating the index needs (a name stands for its
#: submodules too).
HEAVY = (
    "ai_edge_litert",
    "tensorflow",
    "numpy",
    "PIL",
    "rawpy",
    "exiv2",
    "alembic",
    "musiq_daemon.runtime",
    "musiq_daemon.api",
    "musiq_daemon.pipeline",
    "musiq_daemon.decode",
    "musiq_daemon.preprocess",
    "musiq_daemon.metadata.writer",
)


def imported(args: list[str], env: dict[str, str]) -> set[str]:
    """The modules ``musiqd ARGS`` imports (it must succeed)."""
    result = subprocess.run(
        REPORTED + args, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    lines = result.stderr.splitlines()
    report = [line for line in lines if line.startswith("import time:")]
    rest = [line for line in lines if not line.startswith("import time:")]
    assert result.returncode == 0, result.stdout + "\n".join(rest)
    modules = {line.rsplit("|", 1)[1].strip() for line in report[1:]}  # the first line is the header
    assert "musiq_daemon.cli" in modules, "no -X importtime report: " + result.stderr[:2000]
    return modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def index(env: dict[str, str], tmp_path: Path) -> Path:
    """The default index of ``env``, created by ``musiqd db upgrade``, holding one scored photo."""
    # Creating the schema is what Alembic is for: this also shows that the report sees it.
    assert "alembic" in imported(["db", "upgrade"], env)
    path = Path(env["MUSIQD_DATA_DIR"]) / "index.sqlite3"
    assert path.is_file()
    photo = tmp_path / "photos" / "a.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"not decoded here")
    record = ScoreRecord(
        score=4.5, raw=87.5, model_id="koniq", model_version="abcdef012345", variant="dynamic-int8",
        model_sha256="0" * 64, scale_min=1.0, scale_max=5.0, resolution_policy="max_side=1024",
        device="cpu", num_tokens=385, scored_size=(384, 512), stored_size=(512, 384), source="full",
        format="JPEG", orientation_applied=True, scored_at=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    db = open_index(str(path), upgrade_schema=False)
    try:
        with db.session() as session:
            record_score(session, upsert_photo(session, photo, roots=[photo.parent]), record)
    finally:
        db.close()
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["config", "show"],
        ["config", "check"],
        ["models", "list"],
    ],
    ids=" ".join,
)
def test_commands_without_an_index_start_light(env: dict[str, str], args: list[str]) -> None:
    assert heavy(imported(args, env)) == []


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--min", "4"],
        ["query", "--format", "json"],
        ["stats"],
        ["status"],
        ["pause"],
        ["resume"],
        ["db", "current"],
    ],
    ids=" ".join,
)
def test_commands_on_an_up_to_date_index_start_light(
    env: dict[str, str], index: Path, args: list[str]
) -> None:
    modules = imported(args, env)
    assert heavy(modules) == []
    if args[0] == "query":  # an up-to-date SQLite index is read with the standard library alone
        assert "musiq_daemon.index.reader" in modules and "sqlite3" in modules
        assert "sqlalchemy" not in modules
    else:
        assert "sqlalchemy" in modules  # the index was read, not skipped


def test_query_shows_the_photo_without_the_runtime(env: dict[str, str], index: Path) -> None:
    """The table form (rich) of a query that finds something."""
    result = subprocess.run(
        [*MUSIQD, "query", "--min", "4"], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    assert "a.jpg" in result.stdout and "4.50" in result.stdout
    assert heavy(imported(["query", "--min", "4"], env)) == []


def test_a_configured_device_loads_no_runtime(env: dict[str, str], tmp_path: Path, index: Path) -> None:
    """A daemon's configuration names its device: reading it must not load the runtime to check it."""
    config = tmp_path / "config.toml"
    config.write_text('device = "gpu"\nvariant = "fp32"\n\n[write]\nmode = "sidecar"\n', encoding="utf-8")
    env = {**env, "MUSIQD_CONFIG": str(config)}
    for args in (["status"], ["config", "show"]):
        assert heavy(imported(args, env)) == [], args


def test_the_configuration_knows_the_runtime_devices() -> None:
    from musiq_daemon import config, runtime

    assert config.DEVICES == runtime.DEVICES


def test_the_configuration_knows_the_burst_defaults() -> None:
    """The configuration's burst settings default to `musiqd cull`'s (config.py does not import cull.py,
    which loads numpy and Pillow)."""
    from musiq_daemon import config, cull

    assert (config.Config().burst_gap, config.Config().burst_distance) == (
        cull.DEFAULT_GAP_S,
        cull.DEFAULT_MAX_DISTANCE,
    )
