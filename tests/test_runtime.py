"""LiteRT runtime: device choice and fallback, chunking and padding (exact, int8 included), bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from musiq_daemon.errors import DeviceError, ModelFileError, UsageError
from musiq_daemon.model.checkpoint import load_checkpoint
from musiq_daemon.model.config import TOKEN_DIM
from musiq_daemon.model.reference import forward
from musiq_daemon.model.store import model_path
from musiq_daemon.runtime import (
    BUCKET,
    STEM_CHUNK,
    CpuBackend,
    bucket_length,
    model_rows,
    open_engine,
    pad_rows,
    vulkan_available,
)


def tokens(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.zeros((n, TOKEN_DIM), dtype=np.float32)
    t[:, :-3] = rng.uniform(-1, 1, size=(n, TOKEN_DIM - 3))
    t[:, -3] = rng.integers(0, 100, size=n)
    t[:, -2] = rng.integers(0, 3, size=n)
    t[:, -1] = 1
    return t


def test_bucket_length() -> None:
    assert bucket_length(1) == BUCKET
    assert bucket_length(BUCKET) == BUCKET
    assert bucket_length(BUCKET + 1) == 2 * BUCKET
    assert bucket_length(385) % BUCKET == 0 and 385 <= bucket_length(385) < 385 + BUCKET


def test_pad_rows_repeats_the_last_row() -> None:
    t = tokens(5)
    padded = pad_rows(t, 32)
    assert padded.shape == (32, TOKEN_DIM)
    np.testing.assert_array_equal(padded[:5], t)
    np.testing.assert_array_equal(padded[5:], np.repeat(t[4:5], 27, axis=0))
    assert pad_rows(t, 5) is t


def test_model_rows_drops_preprocessing_padding() -> None:
    t = tokens(6)
    t[[1, 4], -1] = 0
    np.testing.assert_array_equal(model_rows(t), t[[0, 2, 3, 5]])
    full = tokens(3)
    assert model_rows(full) is full


@pytest.mark.parametrize("variant", ["fp32", "dynamic-int8"])
def test_padding_never_changes_a_score(models_root: Path, variant: str) -> None:
    """Mask-0 rows from preprocessing, the stem's last chunk and the encoder's bucket all leave the
    output bit-identical to an unpadded run, dynamically quantized layers included (their ranges see
    only repeated real rows)."""
    path = model_path("koniq", variant, models_root)
    engine = open_engine(path, num_outputs=1, device="cpu")
    n = STEM_CHUNK + 13  # two stem chunks, the second one padded; not a multiple of BUCKET
    t = tokens(n, seed=3)
    got = engine.run(t)

    with_padding = np.concatenate([t[:40], np.zeros((25, TOKEN_DIM), np.float32), t[40:]])
    np.testing.assert_array_equal(engine.run(with_padding), got)

    # The same computation without any padding: exact-size stem calls and an exact-length encoder.
    backend = CpuBackend(path, threads=2)
    embeddings = np.concatenate([backend.embed(t[:STEM_CHUNK]), backend.embed(t[STEM_CHUNK:])])
    unpadded = backend.encode(embeddings, np.ones(n, np.float32))
    backend.close()
    np.testing.assert_array_equal(unpadded, got)


def test_cpu_engine_matches_reference_across_buckets(
    models_root: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    ckpt = load_checkpoint(tiny_checkpoints["koniq"])
    engine = open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="cpu")
    assert engine.device == "cpu"
    results = {}
    # Different lengths force re-allocation; going back to an earlier length must give the same result.
    for n in (50, 385, 7, STEM_CHUNK, 50):
        t = tokens(n, seed=n)
        got = engine.run(t)
        want = forward(ckpt.params, ckpt.config, t)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        if n in results:
            np.testing.assert_array_equal(got, results[n])
        results[n] = got


def test_auto_falls_back_to_cpu_without_gpu(models_root: Path) -> None:
    if vulkan_available():
        pytest.skip("this host has a Vulkan loader; the no-GPU fallback is exercised on hosts without one")
    engine = open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="auto")
    assert engine.device == "cpu"
    assert engine.fallback_reason and "Vulkan" in engine.fallback_reason


def test_gpu_requested_without_gpu_fails_clearly(models_root: Path) -> None:
    if vulkan_available():
        pytest.skip("this host has a Vulkan loader; whether a GPU works there is checked by the auto probe")
    with pytest.raises(DeviceError, match="--device gpu") as info:
        open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="gpu")
    assert "\n" not in str(info.value)


def test_bad_arguments_and_files(tmp_path: Path, models_root: Path) -> None:
    with pytest.raises(UsageError, match="unknown device"):
        open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="tpu")
    with pytest.raises(UsageError, match="threads"):
        open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, threads=0)
    with pytest.raises(ModelFileError, match="does not exist"):
        open_engine(tmp_path / "missing.tflite", num_outputs=1, device="cpu")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00not a flatbuffer" * 10)
    with pytest.raises(ModelFileError) as info:
        open_engine(junk, num_outputs=1, device="cpu")
    assert "\n" not in str(info.value) and "junk.tflite" in str(info.value)


def test_single_signature_model_of_an_older_musiqd_is_refused(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow", reason="making an old-format model needs the convert extra")
    module = tf.Module()
    module.serve = tf.function(
        lambda tokens: tf.reduce_mean(tokens, axis=[1, 2])[:, None],
        input_signature=[tf.TensorSpec([1, None, TOKEN_DIM], tf.float32, name="tokens")],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    old = tmp_path / "fp32.tflite"
    old.write_bytes(converter.convert())
    with pytest.raises(ModelFileError, match=r"older musiqd.*musiqd models convert") as info:
        open_engine(old, num_outputs=1, device="cpu")
    assert "\n" not in str(info.value)


def test_engine_rejects_malformed_tokens(models_root: Path) -> None:
    engine = open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="cpu")
    with pytest.raises(ValueError):
        engine.run(np.zeros((0, TOKEN_DIM), np.float32))
    with pytest.raises(ValueError):
        engine.run(np.zeros((4, 10), np.float32))


QUIET_STDERR_RACE = r"""
import logging, os, sys, threading, time
from musiq_daemon.daemon.systemd import configure_logging
from musiq_daemon.runtime import _quiet_stderr

configure_logging()
log = logging.getLogger("musiqd.race")
stop = threading.Event()

def silence():
    while not stop.is_set():
        with _quiet_stderr():
            os.write(2, b"native noise\n")
            time.sleep(0.0005)

def talk(name):
    for i in range(200):
        log.info("%s %d", name, i)

silencers = [threading.Thread(target=silence) for _ in range(3)]
talkers = [threading.Thread(target=talk, args=(f"t{n}",)) for n in range(2)]
for t in silencers + talkers:
    t.start()
for t in talkers:
    t.join()
stop.set()
for t in silencers:
    t.join()
log.info("still here")
"""


def test_silencing_native_stderr_from_several_threads_loses_no_log_line(tmp_path: Path) -> None:
    """Workers silence the runtime's native messages (file descriptor 2) while other threads log: every log
    line arrives, no native message does, and descriptor 2 is the log file again afterwards."""
    import subprocess
    import sys

    log_file = tmp_path / "stderr.log"
    with log_file.open("wb") as err:
        subprocess.run([sys.executable, "-c", QUIET_STDERR_RACE], stderr=err, check=True, timeout=120)
    lines = log_file.read_text().splitlines()
    assert "native noise" not in lines
    for name in ("t0", "t1"):
        assert sum(line.endswith(tuple(f" {name} {i}" for i in range(200))) for line in lines) == 200
    assert lines[-1].endswith("INFO still here")
