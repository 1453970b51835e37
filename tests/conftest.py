"""Shared fixtures: synthetic checkpoints in the official layout, converted by the real converter.

Real MUSIQ weights cannot be downloaded where the tests run; these checkpoints have exactly the official
keys and shapes (a tiny transformer for speed) and go through the same loader, converter and runtime.
"""

from __future__ import annotations

import os
from pathlib import Path

# TensorFlow (imported by some tests as an oracle, and by the converter) reads this once, at import: set it
# before any test imports it, so conversions stay quiet whichever test runs first.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from sqlalchemy import create_engine, text

from musiq_daemon.model.config import MusiqConfig
from musiq_daemon.model.store import install_from_checkpoint
from musiq_daemon.model.synthetic import write_synthetic_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "koniq": write_synthetic_checkpoint(root / "koniq_ckpt.npz", MusiqConfig.tiny(1), seed=1),
        "ava": write_synthetic_checkpoint(root / "ava_ckpt.npz", MusiqConfig.tiny(10), seed=2),
    }


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Path:
    """A model directory with tiny koniq (fp32, dynamic-int8) and ava (fp32) models installed."""
    root = tmp_path_factory.mktemp("models")
    install_from_checkpoint(tiny_checkpoints["koniq"], "koniq", ["fp32", "dynamic-int8"], root=root)
    install_from_checkpoint(tiny_checkpoints["ava"], "ava", ["fp32"], root=root)
    return root


# --- index backends: SQLite always, PostgreSQL when the CI (or a developer) provides a server -------------

PG_URL = os.environ.get("MUSIQD_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def reset_postgres(url: str) -> None:
    """An empty database: every table of an earlier test dropped."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty index on each backend (a fresh SQLite file, or the reset PostgreSQL database)."""
    if request.param == "postgresql":
        assert PG_URL is not None
        reset_postgres(PG_URL)
        return PG_URL
    return str(tmp_path / "index.sqlite3")


@pytest.fixture
def env(tmp_path: Path, models_root: Path) -> dict[str, str]:
    """The environment for running ``musiqd`` as a user would, isolated from the developer's own: the tiny
    test models, a data folder of the test's own, and no configuration file or MUSIQD_* variable of theirs
    (``score`` reads the same configuration as the daemon)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
    return {
        **clean,
        "MUSIQD_DATA_DIR": str(tmp_path / "data"),
        "MUSIQD_MODEL_DIR": str(models_root),
        "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
    }
