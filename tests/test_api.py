"""The scoring library end to end: the score is the model's (checked against the numpy reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from musiq_daemon.api import ScoreFailure, Scorer, ScoreRecord
from musiq_daemon.errors import DecodeError
from musiq_daemon.model.checkpoint import load_checkpoint
from musiq_daemon.model.reference import forward, raw_score
from musiq_daemon.model.verify import sample_photos
from musiq_daemon.preprocess import ResolutionPolicy, limit_resolution, make_tokens


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "photo.png"
    Image.fromarray(sample_photos(1, size=(300, 450), seed=3)[0]).save(path)
    return path


def test_score_equals_reference_pipeline(
    models_root: Path, tiny_checkpoints: dict[str, Path], photo_png: Path
) -> None:
    scorer = Scorer("koniq", "fp32", device="cpu", models_root=models_root)
    record = scorer.score(photo_png)
    ckpt = load_checkpoint(tiny_checkpoints["koniq"])
    pixels = np.asarray(Image.open(photo_png).convert("RGB"))
    tokens = make_tokens(limit_resolution(pixels, ResolutionPolicy(1024))).tokens
    want = raw_score(forward(ckpt.params, ckpt.config, tokens))
    assert record.raw == pytest.approx(want, rel=1e-4)
    assert record.score == pytest.approx(min(5.0, max(1.0, 1 + 4 * want / 100)), rel=1e-4)
    assert record.num_tokens == tokens.shape[0]
    assert record.scored_size == (300, 450)
    assert record.path == str(photo_png)
    assert set(record.timings) == {"decode", "preprocess", "inference"} and record.duration > 0


def test_path_pil_and_array_inputs_agree(models_root: Path, photo_png: Path) -> None:
    scorer = Scorer("koniq", "fp32", device="cpu", models_root=models_root)
    from_path = scorer.score(photo_png)
    with Image.open(photo_png) as img:
        from_pil = scorer.score(img)
        from_array = scorer.score(np.asarray(img.convert("RGB")))
    assert from_path.raw == from_pil.raw == from_array.raw
    assert from_pil.path is None


def test_ava_head_reports_softmax_mean(models_root: Path, photo_png: Path) -> None:
    record = Scorer("ava", "fp32", device="cpu", models_root=models_root).score(photo_png)
    assert 1.0 <= record.raw <= 10.0 and record.score == pytest.approx(record.raw)
    assert (record.scale_min, record.scale_max) == (1.0, 10.0)


def test_resolution_policy_is_recorded_and_changes_tokens(models_root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(sample_photos(1, size=(1000, 1500), seed=4)[0]).save(big)
    capped = Scorer("koniq", "fp32", device="cpu", models_root=models_root).score(big)
    full = Scorer(
        "koniq", "fp32", device="cpu", models_root=models_root, policy=ResolutionPolicy(None)
    ).score(big)
    assert capped.resolution_policy == "max_side=1024" and capped.scored_size == (683, 1024)
    assert full.resolution_policy == "full" and full.scored_size == (1000, 1500)
    assert capped.num_tokens == 49 + 144 + 22 * 32
    assert full.num_tokens == 49 + 144 + 32 * 47


def test_dynamic_int8_close_to_fp32(models_root: Path, photo_png: Path) -> None:
    fp32 = Scorer("koniq", "fp32", device="cpu", models_root=models_root).score(photo_png)
    int8 = Scorer("koniq", "dynamic-int8", device="cpu", models_root=models_root).score(photo_png)
    assert int8.variant == "dynamic-int8" and int8.model_version == fp32.model_version
    assert int8.model_sha256 != fp32.model_sha256
    assert int8.raw == pytest.approx(fp32.raw, rel=0.05)


def test_score_many_keeps_order_and_reports_failures(
    models_root: Path, photo_png: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(photo_png.read_bytes()[:200])
    scorer = Scorer("koniq", "fp32", device="cpu", models_root=models_root)
    results = list(scorer.score_many([photo_png, broken, photo_png]))
    assert isinstance(results[0], ScoreRecord) and isinstance(results[2], ScoreRecord)
    assert isinstance(results[1], ScoreFailure) and results[1].path == str(broken)
    assert "broken.png" in results[1].error.message
    assert results[0].raw == results[2].raw
    with pytest.raises(DecodeError):
        scorer.score(broken)


def test_overlapped_with_save_runs_three_stages_at_once_in_order() -> None:
    """Decode of the next photo, inference of this one and the write of the previous one run together,
    each stage in its own thread, and results come in the photos' order."""
    import threading

    from musiq_daemon.api import overlapped_with_save

    started_finish = {i: threading.Event() for i in range(6)}
    threads: dict[str, set[str]] = {"prepare": set(), "finish": set(), "save": set()}

    def prepare(i: int) -> int:
        threads["prepare"].add(threading.current_thread().name)
        return i

    def finish(i: int) -> int:
        threads["finish"].add(threading.current_thread().name)
        started_finish[i].set()
        return i * 10

    def save(value: int) -> str:
        threads["save"].add(threading.current_thread().name)
        i = value // 10
        if i + 1 < 6:  # the next photo's inference starts while this one is being written
            assert started_finish[i + 1].wait(timeout=30), f"inference of {i + 1} waited for the write of {i}"
        return f"photo {i}"

    assert list(overlapped_with_save(range(6), prepare, finish, save)) == [f"photo {i}" for i in range(6)]
    assert threads["finish"] == {threading.current_thread().name}
    assert all(name.startswith("musiqd-decode") for name in threads["prepare"])
    assert all(name.startswith("musiqd-write") for name in threads["save"])


def test_overlapped_with_save_reports_a_failed_write_at_its_photo() -> None:
    from musiq_daemon.api import overlapped_with_save

    def save(i: int) -> int:
        if i == 2:
            raise OSError("disk full")
        return i

    results = overlapped_with_save(range(5), lambda i: i, lambda i: i, save)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(OSError, match="disk full"):
        next(results)
