"""Preprocessing must reproduce the official TensorFlow pipeline; TensorFlow's own ops are the oracle here."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from musiq_daemon.errors import DecodeError, UsageError
from musiq_daemon.model.config import HASH_GRID, PATCH_SIZE, TOKEN_DIM, TOKEN_PIXELS
from musiq_daemon.preprocess import (
    PatchSequence,
    ResolutionPolicy,
    aspect_resize_size,
    extract_patches,
    limit_resolution,
    make_tokens,
    pad_tokens,
    resize_gaussian,
    spatial_hash,
)

TOL = 1e-6

# (h, w): odd, portrait, landscape, tiny, exact multiples of 32, one-off multiples, very wide.
IMAGE_SIZES = [
    (5, 7),
    (17, 31),
    (1, 1),
    (32, 32),
    (33, 65),
    (301, 199),
    (199, 301),
    (224, 150),
    (40, 1500),
    (384, 512),
]


@pytest.fixture(scope="module")
def tf() -> ModuleType:
    module: ModuleType = pytest.importorskip("tensorflow")
    return module


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------ oracle


def _tf_hash(tf: ModuleType, count_h: int, count_w: int) -> Any:
    """Hashed positions as the reference builds them: a legacy nearest-neighbour resize of range(grid)."""
    grid = tf.reshape(tf.range(HASH_GRID, dtype=tf.int32), [HASH_GRID, 1, 1])
    nearest = tf.compat.v1.image.ResizeMethod.NEAREST_NEIGHBOR
    hash_w = tf.compat.v1.image.resize(grid, [count_w, 1], method=nearest)[:, 0, 0]
    hash_h = tf.compat.v1.image.resize(grid, [count_h, 1], method=nearest)[:, 0, 0]
    hash_w = tf.tile(tf.expand_dims(tf.cast(hash_w, tf.int32), 0), (count_h, 1))
    hash_h = tf.tile(tf.expand_dims(tf.cast(hash_h, tf.int32), 1), (1, count_w))
    return tf.reshape(hash_h * HASH_GRID + hash_w, (-1, 1))


def _tf_block(tf: ModuleType, image: Any, h: Any, w: Any, scale_id: int, max_rows: int) -> Any:
    """Patch rows of one scale: SAME patches, hash, scale id, mask, then zero-pad (or cut) to max_rows."""
    patches = tf.image.extract_patches(
        image[None],
        [1, PATCH_SIZE, PATCH_SIZE, 1],
        [1, PATCH_SIZE, PATCH_SIZE, 1],
        [1, 1, 1, 1],
        padding="SAME",
    )
    patches = tf.reshape(patches, [-1, TOKEN_PIXELS])
    count_h = tf.cast(tf.math.ceil(tf.truediv(h, PATCH_SIZE)), tf.int32)
    count_w = tf.cast(tf.math.ceil(tf.truediv(w, PATCH_SIZE)), tf.int32)
    pos = tf.cast(_tf_hash(tf, int(count_h), int(count_w)), tf.float32)
    out = tf.concat([patches, pos, tf.ones_like(pos) * scale_id, tf.ones_like(pos)], axis=1)
    if max_rows >= 0:
        out = tf.concat([out, tf.zeros([max_rows, TOKEN_DIM], tf.float32)], axis=0)[:max_rows]
    return out


def _tf_size(tf: ModuleType, h: Any, w: Any, side: int) -> tuple[Any, Any]:
    ratio = tf.cast(side, tf.float32) / tf.cast(tf.maximum(h, w), tf.float32)
    rh = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
    rw = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
    return rh, rw


def _tf_tokens(tf: ModuleType, rgb: np.ndarray) -> np.ndarray:
    """The official multi-scale pipeline, rebuilt from the TensorFlow ops the reference uses."""
    image = tf.cast(tf.constant(rgb), tf.float32)
    image = (image - tf.constant(0.0)) / (tf.constant(255.0) - tf.constant(0.0))
    image = -1 + image * 2
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    blocks = []
    for scale_id, side in enumerate(sorted([224, 384])):
        rh, rw = _tf_size(tf, h, w, side)
        resized = tf.image.resize(image, (rh, rw), method=tf.image.ResizeMethod.GAUSSIAN)
        max_rows = math.ceil(side / PATCH_SIZE) ** 2
        blocks.append(_tf_block(tf, resized, rh, rw, scale_id, max_rows))
    blocks.append(_tf_block(tf, image, h, w, 2, -1))
    return np.asarray(tf.concat(blocks, axis=0).numpy())


# ------------------------------------------------------------------------------------------------ resize


@pytest.mark.parametrize(
    ("h", "w", "out_h", "out_w"),
    [
        (5, 7, 224, 160),  # tiny, strong upscale
        (17, 31, 123, 224),
        (1, 1, 3, 2),
        (2, 3, 1, 1),
        (40, 1500, 6, 224),  # very wide, strong downscale
        (301, 199, 224, 148),  # odd portrait
        (199, 301, 148, 224),  # odd landscape
        (64, 48, 64, 48),  # same size: taps land exactly on the +-1.5 cut-off
        (64, 96, 32, 48),  # exact halving: cut-off taps again
        (100, 37, 384, 142),
    ],
)
def test_resize_gaussian_matches_tensorflow(tf: ModuleType, h: int, w: int, out_h: int, out_w: int) -> None:
    image = _rng(h * 1000 + w).uniform(-1, 1, (h, w, 3)).astype(np.float32)
    expected = tf.image.resize(image, (out_h, out_w), method="gaussian", antialias=False).numpy()
    got = resize_gaussian(image, out_h, out_w)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOL


def test_resize_gaussian_is_not_a_plain_copy_at_same_size() -> None:
    # The official resize blurs even when the size does not change; a shortcut would be wrong.
    image = _rng(1).uniform(-1, 1, (20, 30, 3)).astype(np.float32)
    assert np.max(np.abs(resize_gaussian(image, 20, 30) - image)) > 0.1


def test_resize_gaussian_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError):
        resize_gaussian(np.zeros((4, 4, 3), np.float32), 0, 4)


def test_aspect_resize_size_matches_tensorflow(tf: ModuleType) -> None:
    sizes = [
        (h, w) for h in (1, 2, 5, 17, 31, 299, 683, 1000, 3000) for w in (1, 3, 33, 224, 768, 1024, 4000)
    ]
    sizes += [(h, 1000) for h in range(400, 1001, 7)]  # many rounding cases near .5
    for side in (224, 384):
        hs = tf.constant([s[0] for s in sizes])
        ws = tf.constant([s[1] for s in sizes])
        rh, rw = _tf_size(tf, hs, ws, side)
        expected = [(max(a, 1), max(b, 1)) for a, b in zip(rh.numpy(), rw.numpy(), strict=True)]
        assert [aspect_resize_size(h, w, side) for h, w in sizes] == expected


def test_aspect_resize_size_rounds_half_to_even() -> None:
    # 224/448 = 0.5 exactly: 5 * 0.5 = 2.5 -> 2 and 7 * 0.5 = 3.5 -> 4.
    assert aspect_resize_size(5, 448, 224) == (2, 224)
    assert aspect_resize_size(448, 7, 224) == (224, 4)


def test_aspect_resize_size_keeps_one_pixel_for_thin_images(tf: ModuleType) -> None:
    # The reference would ask TensorFlow for a 0-pixel side here, which it refuses.
    rh, _ = _tf_size(tf, 1, 500, 224)
    assert int(rh) == 0
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.image.resize(np.zeros((1, 500, 3), np.float32), (0, 224), method="gaussian")
    assert aspect_resize_size(1, 500, 224) == (1, 224)


# ------------------------------------------------------------------------------------------------ patches


@pytest.mark.parametrize(("h", "w"), [(5, 7), (32, 32), (33, 65), (64, 96), (100, 37), (40, 1500)])
def test_extract_patches_matches_tensorflow(tf: ModuleType, h: int, w: int) -> None:
    image = _rng(h + 7 * w).uniform(-1, 1, (h, w, 3)).astype(np.float32)
    expected = tf.image.extract_patches(
        image[None], [1, 32, 32, 1], [1, 32, 32, 1], [1, 1, 1, 1], padding="SAME"
    ).numpy()
    patches, count_h, count_w = extract_patches(image)
    assert (count_h, count_w) == (math.ceil(h / 32), math.ceil(w / 32))
    assert expected.shape == (1, count_h, count_w, 3072)
    assert patches.dtype == np.float32
    np.testing.assert_array_equal(patches, expected.reshape(-1, 3072))


def test_extract_patches_pads_with_zero_split_before_and_after() -> None:
    # 33 rows -> 64: 31 rows of padding, 15 before and 16 after.
    image = np.ones((33, 32, 3), np.float32)
    patches, count_h, count_w = extract_patches(image)
    assert (count_h, count_w) == (2, 1)
    top = patches[0].reshape(32, 32, 3)
    bottom = patches[1].reshape(32, 32, 3)
    assert np.all(top[:15] == 0) and np.all(top[15:] == 1)
    assert np.all(bottom[:16] == 1) and np.all(bottom[16:] == 0)


def test_spatial_hash_matches_tensorflow_legacy_nearest(tf: ModuleType) -> None:
    for count_h, count_w in [(1, 1), (3, 7), (7, 5), (10, 10), (12, 9), (24, 32), (47, 2)]:
        expected = _tf_hash(tf, count_h, count_w).numpy().reshape(-1)
        np.testing.assert_array_equal(spatial_hash(count_h, count_w), expected)


def test_spatial_hash_large_counts_need_float32(tf: ModuleType) -> None:
    differs_from_exact = []
    differs_from_float64 = []
    for count in range(1, 420):
        expected = _tf_hash(tf, count, 1).numpy().reshape(-1) // HASH_GRID
        np.testing.assert_array_equal(spatial_hash(count, 1) // HASH_GRID, expected)
        np.testing.assert_array_equal(spatial_hash(1, count), expected)
        i = np.arange(count)
        if not np.array_equal(np.minimum(i * HASH_GRID // count, HASH_GRID - 1), expected):
            differs_from_exact.append(count)
        if not np.array_equal(np.minimum(np.floor(i * (HASH_GRID / count)), HASH_GRID - 1), expected):
            differs_from_float64.append(count)
    # The float32 rounding is real: exact integer arithmetic diverges from 205 patches on, a float64
    # product already at 154 (77 * fl64(10/154) falls just below 5).
    assert differs_from_exact[:2] == [205, 235]
    assert differs_from_float64[:2] == [154, 205]


def test_spatial_hash_range_and_layout() -> None:
    index = spatial_hash(3, 4)
    assert index.shape == (12,)
    assert np.issubdtype(index.dtype, np.integer)
    # rows: floor(i * 10/3) = 0, 3, 6; columns: floor(j * 2.5) = 0, 2, 5, 7.
    np.testing.assert_array_equal(index.reshape(3, 4), [[0, 2, 5, 7], [30, 32, 35, 37], [60, 62, 65, 67]])


# ------------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize(("h", "w"), IMAGE_SIZES)
def test_make_tokens_matches_tensorflow_pipeline(tf: ModuleType, h: int, w: int) -> None:
    rgb = _rng(3 * h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = _tf_tokens(tf, rgb)
    seq = make_tokens(rgb)
    assert seq.tokens.dtype == np.float32
    assert seq.tokens.shape == expected.shape
    assert np.max(np.abs(seq.tokens - expected)) <= TOL


def test_make_tokens_normalization_covers_all_levels(tf: ModuleType) -> None:
    rgb = np.arange(32 * 24 * 3, dtype=np.int64).reshape(32, 24, 3).astype(np.uint8)  # every value 0..255
    native = make_tokens(rgb).tokens[49 + 144 :, :TOKEN_PIXELS]
    expected = _tf_tokens(tf, rgb)[49 + 144 :, :TOKEN_PIXELS]
    np.testing.assert_array_equal(native, expected)
    assert native.min() == -1.0 and native.max() == 1.0


def test_make_tokens_layout() -> None:
    seq = make_tokens(_rng(5).integers(0, 256, (384, 512, 3), dtype=np.uint8))
    assert isinstance(seq, PatchSequence)
    assert seq.num_tokens == 385  # 49 + 144 + 12 * 16
    assert seq.scale_rows == (49, 144, 192)
    assert seq.native_grid == (12, 16)
    assert seq.image_size == (384, 512)
    t = seq.tokens
    assert t.shape == (385, TOKEN_DIM)
    # 224 scale: 168x224 -> 6x7 = 42 real rows then 7 padding rows.
    assert np.all(t[:42, -1] == 1) and np.all(t[42:49] == 0)
    # 384 scale: 288x384 -> 9x12 = 108 real rows then 36 padding rows.
    assert np.all(t[49:157, -1] == 1) and np.all(t[157:193] == 0)
    assert np.all(t[193:, -1] == 1)
    np.testing.assert_array_equal(t[:42, -2], 0)
    np.testing.assert_array_equal(t[49:157, -2], 1)
    np.testing.assert_array_equal(t[193:, -2], 2)
    np.testing.assert_array_equal(t[193:, -3], spatial_hash(12, 16))
    np.testing.assert_array_equal(t[:42, -3], spatial_hash(6, 7))


def test_make_tokens_thin_image_does_not_crash() -> None:
    seq = make_tokens(_rng(6).integers(0, 256, (1, 500, 3), dtype=np.uint8))
    # 224 scale is 1x224 (the reference would fail with a 0-pixel side): 1x7 patches.
    assert np.all(seq.tokens[:7, -1] == 1) and np.all(seq.tokens[7:49, -1] == 0)
    assert seq.native_grid == (1, 16)
    assert np.all(np.isfinite(seq.tokens))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 0, 3), np.uint8),
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
    ],
)
def test_make_tokens_rejects_degenerate_images(bad: np.ndarray) -> None:
    with pytest.raises(DecodeError) as info:
        make_tokens(bad)
    assert "\n" not in str(info.value) and str(info.value)


def test_pad_tokens_appends_masked_zero_rows() -> None:
    seq = make_tokens(_rng(7).integers(0, 256, (20, 40, 3), dtype=np.uint8)).tokens
    padded = pad_tokens(seq, seq.shape[0] + 5)
    assert padded.shape == (seq.shape[0] + 5, TOKEN_DIM)
    assert padded.dtype == np.float32
    np.testing.assert_array_equal(padded[: seq.shape[0]], seq)
    assert np.all(padded[seq.shape[0] :] == 0)
    assert pad_tokens(seq, seq.shape[0]) is seq
    with pytest.raises(ValueError):
        pad_tokens(seq, seq.shape[0] - 1)


# ------------------------------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("text", "max_side"),
    [
        ("full", None),
        (" FULL ", None),
        ("max_side=1024", 1024),
        ("512", 512),
        ("32", 32),
        ("Max_Side=64", 64),
    ],
)
def test_resolution_policy_parse(text: str, max_side: int | None) -> None:
    policy = ResolutionPolicy.parse(text)
    assert policy.max_side == max_side
    assert ResolutionPolicy.parse(policy.describe()) == policy


def test_resolution_policy_describe() -> None:
    assert ResolutionPolicy(None).describe() == "full"
    assert ResolutionPolicy(1024).describe() == "max_side=1024"


@pytest.mark.parametrize(
    "text", ["", "0", "31", "-64", "max_side=", "max_side=31", "1e3", "64.5", "half", "max_side=12x", "64 px"]
)
def test_resolution_policy_rejects_bad_text(text: str) -> None:
    with pytest.raises(UsageError) as info:
        ResolutionPolicy.parse(text)
    assert "\n" not in str(info.value) and "full" in str(info.value)


def test_resolution_policy_rejects_bad_value() -> None:
    with pytest.raises(UsageError):
        ResolutionPolicy(16)


def test_resolution_policy_target_size() -> None:
    cap = ResolutionPolicy(1024)
    assert cap.target_size(3000, 4000) == (768, 1024)
    assert cap.target_size(4000, 3000) == (1024, 768)
    assert cap.target_size(683, 1024) == (683, 1024)
    assert cap.target_size(100, 50) == (100, 50)
    assert cap.target_size(3, 5000) == (1, 1024)
    assert cap.target_size(1100, 1100) == (1024, 1024)
    assert ResolutionPolicy(None).target_size(9000, 7000) == (9000, 7000)


def test_limit_resolution_returns_input_when_it_fits() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    assert limit_resolution(rgb, ResolutionPolicy(200)) is rgb
    assert limit_resolution(rgb, ResolutionPolicy(None)) is rgb


def test_limit_resolution_shrinks_with_antialiasing() -> None:
    # A 1-pixel checkerboard: antialiased shrinking gives flat grey, plain sampling would keep 0/255.
    y, x = np.mgrid[:300, :400]
    rgb = np.repeat(((x + y) % 2 * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    small = limit_resolution(rgb, ResolutionPolicy.parse("max_side=100"))
    assert small.dtype == np.uint8
    assert small.shape == (75, 100, 3)
    interior = small[5:-5, 5:-5].astype(np.float64)
    assert abs(interior.mean() - 127.5) < 3
    assert interior.std() < 3


def test_limit_resolution_keeps_content_and_aspect() -> None:
    y, x = np.mgrid[:480, :160]
    rgb = np.stack([x * 255 // 159, y * 255 // 479, np.full_like(x, 40)], axis=2).astype(np.uint8)
    small = limit_resolution(rgb, ResolutionPolicy(96))
    assert small.shape == (96, 32, 3)
    assert abs(float(small[..., 0].mean()) - float(rgb[..., 0].mean())) < 2
    assert abs(float(small[..., 1].mean()) - float(rgb[..., 1].mean())) < 2
    assert np.all(np.abs(small[..., 2].astype(int) - 40) <= 1)
