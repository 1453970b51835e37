"""Loading official-layout checkpoints, and refusing every kind of bad file with one clear line."""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from musiq_daemon.errors import CheckpointError
from musiq_daemon.model.checkpoint import STD_CONV_KERNELS, load_checkpoint, standardize_kernel
from musiq_daemon.model.config import CHECKPOINT_PREFIX, MusiqConfig, expected_shapes
from musiq_daemon.model.synthetic import synthetic_params, write_synthetic_checkpoint

TINY = MusiqConfig.tiny()


def write_params(path: Path, params: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """An npz with ``params`` under ``opt/target/`` and optimizer state beside it, like the official files."""
    arrays = {CHECKPOINT_PREFIX + k: v for k, v in params.items()}
    arrays["opt/state/step"] = np.asarray(7, dtype=np.int64)
    save = np.savez_compressed if compressed else np.savez
    with path.open("wb") as fh:
        save(fh, **arrays)  # type: ignore[arg-type]
    return path


def expect_error(path: Path, *fragments: str, **kwargs: object) -> str:
    """Loading fails with a one-line CheckpointError that names the file and contains ``fragments``."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.mark.parametrize(
    "config",
    [MusiqConfig.tiny(1), MusiqConfig.tiny(10), MusiqConfig(num_classes=1), MusiqConfig(num_classes=10)],
    ids=["tiny-1", "tiny-10", "full-1", "full-10"],
)
def test_round_trip_infers_config_and_hashes_file(tmp_path: Path, config: MusiqConfig) -> None:
    path = write_synthetic_checkpoint(tmp_path / "x_ckpt.npz", config, seed=3)
    ckpt = load_checkpoint(path, num_classes=config.num_classes)
    assert ckpt.config == config
    assert ckpt.path == path
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # Optimizer state is dropped and the prefix is stripped.
    assert set(ckpt.params) == set(expected_shapes(config))
    with np.load(path) as npz:
        for key, value in ckpt.params.items():
            assert value.dtype == np.float32
            assert not value.flags.writeable
            np.testing.assert_array_equal(value, npz[CHECKPOINT_PREFIX + key])


def test_compressed_npz_and_float64_values_load(tmp_path: Path) -> None:
    params = {k: v.astype(np.float64) for k, v in synthetic_params(TINY).items()}
    ckpt = load_checkpoint(write_params(tmp_path / "c.npz", params, compressed=True))
    assert ckpt.config == TINY
    assert all(v.dtype == np.float32 for v in ckpt.params.values())


def test_optimizer_state_is_never_read(tmp_path: Path) -> None:
    # An object array needs pickle to load, which the loader refuses: it must not even be touched.
    path = tmp_path / "opt.npz"
    arrays = {CHECKPOINT_PREFIX + k: v for k, v in synthetic_params(TINY).items()}
    arrays["opt/state/param_states"] = np.array([{"momentum": 1}], dtype=object)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    assert load_checkpoint(path).config == TINY


def test_head_mismatch_names_both_sizes(tmp_path: Path) -> None:
    path = write_synthetic_checkpoint(tmp_path / "ava_ckpt.npz", MusiqConfig.tiny(10))
    expect_error(path, "has a 10-class head but model koniq expects 1", num_classes=1, model_id="koniq")
    expect_error(path, "10-class head", "expects 1", num_classes=1)
    assert load_checkpoint(path, num_classes=10).config.num_classes == 10


def test_std_conv_kernels_are_all_the_stem_convs() -> None:
    convs = {k for k in expected_shapes(TINY) if k.endswith("/kernel") and "conv" in k.split("/")[-2]}
    assert set(STD_CONV_KERNELS) == convs
    assert len(STD_CONV_KERNELS) == 5


def test_standardize_kernel_matches_the_formula() -> None:
    kernel = synthetic_params(TINY)["conv_root/kernel"]
    w = kernel.astype(np.float64)
    mean = w.mean(axis=(0, 1, 2))
    std = w.std(axis=(0, 1, 2))
    out = standardize_kernel(kernel)
    assert out.dtype == np.float32 and out.shape == kernel.shape
    np.testing.assert_allclose(out, (w - mean) / (std + 1e-5), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="HWIO"):
        standardize_kernel(np.zeros((3, 3, 3), np.float32))


# --- files that are not a checkpoint at all ---------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope_ckpt.npz", "does not exist")


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "is a directory")


def test_tf_hub_saved_model_directory(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01")
    expect_error(tmp_path, "is a directory", "SavedModel", "_ckpt.npz")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_synthetic_checkpoint(tmp_path / "locked_ckpt.npz", TINY)
    path.chmod(0)
    if os.access(path, os.R_OK):  # privileged users read anything: simulate the refusal instead
        real_open = Path.open

        def refuse(self: Path, *args: object, **kwargs: object) -> object:
            if self == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(Path, "open", refuse)
    try:
        expect_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty_ckpt.npz"
    path.write_bytes(b"")
    expect_error(path, "is empty")


def _jpeg(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9")


def _text(path: Path) -> None:
    path.write_text("this is not a checkpoint\n")


def _html(path: Path) -> None:
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")


def _tar_gz(path: Path) -> None:
    path.write_bytes(gzip.compress(b"saved_model.pb" + bytes(600)))


def _npy(path: Path) -> None:
    with path.open("wb") as fh:
        np.save(fh, np.zeros((3, 3), np.float32))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_jpeg, "a JPEG image"),
        (_text, "unknown data"),
        (_html, "HTML"),
        (_tar_gz, "SavedModel"),
        (_npy, "a single .npy array"),
    ],
    ids=["jpeg", "text", "html", "tar-gz", "npy"],
)
def test_not_an_npz(tmp_path: Path, make: Callable[[Path], None], fragment: str) -> None:
    path = tmp_path / "fake_ckpt.npz"
    make(path)
    expect_error(path, "is not an npz archive", fragment)


def test_npz_without_parameters(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3, np.float32), **{"params/dense/kernel": np.zeros((2, 2))})  # type: ignore[arg-type]
    expect_error(path, "not a MUSIQ checkpoint")


def test_other_model_under_opt_target(tmp_path: Path) -> None:
    path = write_params(tmp_path / "vit.npz", {"Transformer/encoder_norm/scale": np.ones(8, np.float32)})
    expect_error(path, "not a MUSIQ checkpoint")


# --- damaged files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated(tmp_path: Path, fraction: float) -> None:
    good = write_synthetic_checkpoint(tmp_path / "good_ckpt.npz", TINY).read_bytes()
    path = tmp_path / "cut_ckpt.npz"
    path.write_bytes(good[: max(3, int(len(good) * fraction))])
    expect_error(path, "truncated or corrupt")


def test_last_byte_missing(tmp_path: Path) -> None:
    good = write_synthetic_checkpoint(tmp_path / "good_ckpt.npz", TINY).read_bytes()
    path = tmp_path / "cut_ckpt.npz"
    path.write_bytes(good[:-1])
    expect_error(path, "truncated or corrupt")


def _damage_member(path: Path, member: str) -> None:
    """Flip bytes in the middle of one member's stored data; the zip structure itself stays intact."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    # Local header: 30 fixed bytes + name + extra field, then the member's data.
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    middle = start + info.compress_size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_corrupt_member_is_detected(tmp_path: Path, compressed: bool) -> None:
    path = write_params(tmp_path / "bad_ckpt.npz", synthetic_params(TINY), compressed=compressed)
    _damage_member(path, CHECKPOINT_PREFIX + "embedding/kernel.npy")
    expect_error(path, "truncated or corrupt")


def test_pickled_parameter_is_refused(tmp_path: Path) -> None:
    params: dict[str, np.ndarray] = dict(synthetic_params(TINY))
    params["head/bias"] = np.array([{"x": 1}], dtype=object)
    expect_error(write_params(tmp_path / "p.npz", params), "truncated or corrupt")


# --- npz files with the wrong contents ----------------------------------------------------------------


def test_missing_key(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    del params["block1/unit1/gn2/bias"]
    expect_error(write_params(tmp_path / "m.npz", params), "lacks 1 parameter", "block1/unit1/gn2/bias")


def test_missing_key_needed_for_inference(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    del params["head/kernel"]
    expect_error(write_params(tmp_path / "m.npz", params), "lacks opt/target/head/kernel")


def test_unexpected_key(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    params["pre_logits/kernel"] = np.zeros((32, 32), np.float32)
    expect_error(write_params(tmp_path / "u.npz", params), "unexpected parameter", "pre_logits/kernel")


def test_wrong_shape(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    params["Transformer/posembed_input/pos_embedding"] = np.zeros((1, 64, 32), np.float32)
    expect_error(
        write_params(tmp_path / "s.npz", params), "pos_embedding with shape (1, 64, 32)", "(1, 100, 32)"
    )


def test_wrong_rank_for_inference(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    params["embedding/kernel"] = params["embedding/kernel"].reshape(-1)
    expect_error(write_params(tmp_path / "r.npz", params), "embedding/kernel", "expected 2 dimensions")


def test_heads_inconsistent_with_hidden_size(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    att = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    params[att + "query/kernel"] = np.zeros((32, 4, 8), np.float32)  # 4 heads here, 2 elsewhere
    expect_error(write_params(tmp_path / "h.npz", params), "with shape", "expected")


def test_encoder_blocks_not_contiguous(tmp_path: Path) -> None:
    params = {k.replace("encoderblock_1/", "encoderblock_2/"): v for k, v in synthetic_params(TINY).items()}
    expect_error(write_params(tmp_path / "b.npz", params), "encoder blocks 0, 2", "not numbered 0..1")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_value(tmp_path: Path, bad: float) -> None:
    params = synthetic_params(TINY)
    params["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"][3, 5] = bad
    expect_error(write_params(tmp_path / "n.npz", params), "non-finite", "encoderblock_1/MlpBlock_3/Dense_0")


def test_float64_overflowing_float32_is_non_finite(tmp_path: Path) -> None:
    params: dict[str, np.ndarray] = dict(synthetic_params(TINY))
    params["head/bias"] = np.full((1,), 1e300, np.float64)
    expect_error(write_params(tmp_path / "o.npz", params), "non-finite", "head/bias")


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_non_float_dtype(tmp_path: Path, dtype: type) -> None:
    params: dict[str, np.ndarray] = dict(synthetic_params(TINY))
    params["gn_root/scale"] = np.ones((1, 1, 1, 64), dtype)
    expect_error(write_params(tmp_path / "d.npz", params), "gn_root/scale of dtype", "expected float")


def test_newline_in_file_name_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines_ckpt.npz"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert "two\\nlines_ckpt.npz" in str(info.value)


def test_line_break_in_a_key_stays_one_line(tmp_path: Path) -> None:
    params = synthetic_params(TINY)
    params["evil\nkey"] = np.zeros(1, np.float32)
    expect_error(write_params(tmp_path / "k.npz", params), "unexpected parameter", "evil\\nkey")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "pipe_ckpt.npz"
    os.mkfifo(path)
    expect_error(path, "not a regular file")
