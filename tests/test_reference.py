"""The numpy reference forward pass, checked against an independent TensorFlow implementation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from musiq_daemon.model.checkpoint import STD_CONV_KERNELS, standardize_kernel
from musiq_daemon.model.config import TOKEN_DIM, TOKEN_PIXELS, MusiqConfig
from musiq_daemon.model.reference import forward, raw_score
from musiq_daemon.model.synthetic import synthetic_params

tf = pytest.importorskip("tensorflow")


def make_tokens(rng: np.random.Generator, n: int, *, flat: int = 0) -> np.ndarray:
    """``n`` valid token rows with random pixels, spatial indices and scale ids.

    The first ``flat`` rows are nearly uniform mid-grey patches (what zero padding and smooth sky look
    like): their GroupNorm variances are tiny, so the normalisation epsilons visibly change the result.
    """
    tokens = np.zeros((n, TOKEN_DIM), np.float32)
    tokens[:, :TOKEN_PIXELS] = rng.uniform(-1, 1, (n, TOKEN_PIXELS))
    for i in range(flat):
        tokens[i, :TOKEN_PIXELS] = 1e-3 * rng.standard_normal(TOKEN_PIXELS)
    tokens[:, -3] = rng.integers(0, 100, n)
    tokens[:, -2] = rng.integers(0, 3, n)
    tokens[:, -1] = 1
    return tokens


def padding_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mask-0 rows with arbitrary content (including out-of-range indices): they must not matter."""
    rows = np.zeros((n, TOKEN_DIM), np.float32)
    rows[:, :TOKEN_PIXELS] = rng.uniform(-5, 5, (n, TOKEN_PIXELS))
    rows[:, -3] = rng.integers(-50, 500, n)
    rows[:, -2] = rng.integers(-3, 9, n)
    return rows


# --- the TensorFlow oracle: the architecture written again, with TF's own ops ------------------------


def tf_forward(params: Mapping[str, np.ndarray], config: MusiqConfig, tokens: np.ndarray) -> np.ndarray:
    """MUSIQ written with TF ops and no code shared with the module under test."""
    p = {k: tf.constant(v, tf.float32) for k, v in params.items()}
    x_all = tf.constant(tokens, tf.float32)
    n = tokens.shape[0]
    mask = x_all[:, -1] > 0.5
    spatial = tf.clip_by_value(tf.cast(x_all[:, -3], tf.int32), 0, 99)
    scale = tf.clip_by_value(tf.cast(x_all[:, -2], tf.int32), 0, 2)
    patches = tf.reshape(x_all[:, :TOKEN_PIXELS], [n, 32, 32, 3])

    def std_conv(x: Any, name: str, stride: int) -> Any:
        w = p[name + "/kernel"]
        mean = tf.reduce_mean(w, axis=[0, 1, 2], keepdims=True)
        std = tf.math.reduce_std(w, axis=[0, 1, 2], keepdims=True)  # population std
        w = (w - mean) / (std + 1e-5)
        return tf.nn.conv2d(x, w, strides=stride, padding="SAME")

    def group_norm(x: Any, name: str, eps: float) -> Any:
        b, h, w, c = x.shape
        g = tf.reshape(x, [b, h, w, 32, c // 32])
        mean, var = tf.nn.moments(g, axes=[1, 2, 4], keepdims=True)
        y = tf.reshape((g - mean) * tf.math.rsqrt(var + eps), [b, h, w, c])
        return y * tf.reshape(p[name + "/scale"], [c]) + tf.reshape(p[name + "/bias"], [c])

    u = "block1/unit1/"
    x = tf.nn.relu(group_norm(std_conv(patches, "conv_root", 2), "gn_root", 1e-6))
    x = tf.nn.max_pool2d(x, ksize=3, strides=2, padding="SAME")
    residual = group_norm(std_conv(x, u + "conv_proj", 1), u + "gn_proj", 1e-4)
    y = tf.nn.relu(group_norm(std_conv(x, u + "conv1", 1), u + "gn1", 1e-4))
    y = tf.nn.relu(group_norm(std_conv(y, u + "conv2", 1), u + "gn2", 1e-4))
    y = group_norm(std_conv(y, u + "conv3", 1), u + "gn3", 1e-4)
    x = tf.reshape(tf.nn.relu(residual + y), [n, -1])

    x = tf.matmul(x, p["embedding/kernel"]) + p["embedding/bias"]
    x += tf.gather(p["Transformer/posembed_input/pos_embedding"][0], spatial)
    x += tf.gather(p["Transformer/scaleembed_input/scale_embedding"][0], scale)
    x = tf.concat([p["Transformer/cls"][0], x], axis=0)
    mask = tf.concat([[True], mask], axis=0)

    def layer_norm(v: Any, name: str) -> Any:
        mean, var = tf.nn.moments(v, axes=[-1], keepdims=True)
        return (v - mean) * tf.math.rsqrt(var + 1e-6) * p[name + "/scale"] + p[name + "/bias"]

    pair_ok = tf.logical_and(mask[:, None], mask[None, :])
    for i in range(config.num_layers):
        blk = f"Transformer/encoderblock_{i}/"
        att = blk + "MultiHeadDotProductAttention_1/"
        h = layer_norm(x, blk + "LayerNorm_0")
        q = tf.einsum("th,hnd->tnd", h, p[att + "query/kernel"]) + p[att + "query/bias"]
        k = tf.einsum("th,hnd->tnd", h, p[att + "key/kernel"]) + p[att + "key/bias"]
        v = tf.einsum("th,hnd->tnd", h, p[att + "value/kernel"]) + p[att + "value/bias"]
        logits = tf.einsum("snd,tnd->nst", q / math.sqrt(config.head_dim), k)
        logits += tf.where(pair_ok, 0.0, -1e10)[None]
        weights = tf.nn.softmax(logits, axis=-1)
        context = tf.einsum("nst,tnd->snd", weights, v)
        x += tf.einsum("snd,ndh->sh", context, p[att + "out/kernel"]) + p[att + "out/bias"]
        h = layer_norm(x, blk + "LayerNorm_2")
        mlp = blk + "MlpBlock_3/"
        h = tf.nn.gelu(tf.matmul(h, p[mlp + "Dense_0/kernel"]) + p[mlp + "Dense_0/bias"], approximate=True)
        x += tf.matmul(h, p[mlp + "Dense_1/kernel"]) + p[mlp + "Dense_1/bias"]

    x = layer_norm(x, "Transformer/encoder_norm")
    out = tf.matmul(x[:1], p["head/kernel"]) + p["head/bias"]
    return np.asarray(out[0])


@pytest.mark.parametrize("num_classes", [10, 1])
def test_matches_tensorflow_oracle(num_classes: int) -> None:
    config = MusiqConfig.tiny(num_classes)
    params = synthetic_params(config, seed=11)
    if num_classes == 1:
        params["head/bias"][:] = 0.0  # keep the comparison about the network, not a constant offset
        # Small root GroupNorm outputs give the bottleneck's GroupNorms small variances too, so their
        # epsilon (1e-4, unlike the root's 1e-6) shows in the output.
        params["gn_root/scale"] *= 0.01
        params["gn_root/bias"] *= 0.01
    rng = np.random.default_rng(5)
    tokens = make_tokens(rng, 7, flat=2)
    tokens = np.concatenate([tokens[:3], padding_rows(rng, 2), tokens[3:]])
    ours = forward(params, config, tokens)
    theirs = tf_forward(params, config, tokens)
    assert ours.shape == (num_classes,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()))


def test_padding_rows_change_nothing() -> None:
    config = MusiqConfig.tiny(10)
    params = synthetic_params(config, seed=2)
    rng = np.random.default_rng(0)
    tokens = make_tokens(rng, 9)
    base = forward(params, config, tokens)
    appended = np.concatenate([tokens, padding_rows(rng, 6)])
    inserted = np.concatenate([tokens[:4], padding_rows(rng, 5), tokens[4:], padding_rows(rng, 1)])
    for padded in (appended, inserted):
        np.testing.assert_allclose(forward(params, config, padded), base, rtol=1e-5, atol=1e-6)


def test_batch_axis_is_accepted() -> None:
    config = MusiqConfig.tiny()
    params = synthetic_params(config)
    tokens = make_tokens(np.random.default_rng(1), 3)
    np.testing.assert_array_equal(forward(params, config, tokens[None]), forward(params, config, tokens))


def test_bad_inputs_are_refused() -> None:
    config = MusiqConfig.tiny()
    params = synthetic_params(config)
    tokens = make_tokens(np.random.default_rng(1), 3)
    with pytest.raises(ValueError, match="shape"):
        forward(params, config, tokens[:, :-1])
    bad_index = tokens.copy()
    bad_index[1, -3] = 100
    with pytest.raises(ValueError, match="spatial index"):
        forward(params, config, bad_index)
    bad_value = tokens.copy()
    bad_value[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        forward(params, config, bad_value)
    with pytest.raises(ValueError, match="shape"):
        forward(params, MusiqConfig.tiny(10), tokens)  # a 1-class head given to a 10-class config


def test_ava_score_is_a_softmax_mean() -> None:
    config = MusiqConfig.tiny(10)
    logits = forward(synthetic_params(config, seed=4), config, make_tokens(np.random.default_rng(2), 5))
    assert 1.0 <= raw_score(logits) <= 10.0
    assert raw_score(np.zeros(10, np.float32)) == pytest.approx(5.5)
    assert raw_score(np.eye(10, dtype=np.float32)[6] * 100) == pytest.approx(7.0)
    assert raw_score(np.array([[1.0, 1.0]])) == pytest.approx(1.5)


def test_regression_score_is_the_value() -> None:
    assert raw_score(np.array([61.25], np.float32)) == 61.25
    with pytest.raises(ValueError):
        raw_score(np.zeros((2, 3)))


def test_full_size_smoke() -> None:
    config = MusiqConfig()
    tokens = make_tokens(np.random.default_rng(3), 100)
    out = forward(synthetic_params(config), config, tokens)
    assert out.shape == (1,) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_standardized_kernels_have_zero_mean_and_unit_std() -> None:
    params = synthetic_params(MusiqConfig.tiny())
    for key in STD_CONV_KERNELS:
        w = standardize_kernel(params[key]).astype(np.float64)
        np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
        # std / (std + 1e-5) for the raw kernels' std of about 0.03..1: within 1e-3 of one.
        np.testing.assert_allclose(w.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
