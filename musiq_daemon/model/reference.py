"""The complete MUSIQ forward pass in float32 NumPy: the project's numerical oracle.

This is the official architecture written out operation by operation, so that converted and quantized
models can be checked against it without JAX or TensorFlow. It favours being obviously right over
being fast, but stays vectorised (convolutions are im2col + matmul) so a full-size forward at a few
hundred tokens takes about a second.

Architecture facts, as the official flax 0.3.3 code defines them:
- Stem per 32x32x3 patch: StdConv 7x7/2 (64 ch, no bias, SAME) -> GroupNorm(32 groups, eps 1e-6, the
  flax default) -> ReLU -> max-pool 3x3/2 SAME -> one bottleneck unit whose four convs are StdConvs and
  whose GroupNorms use eps 1e-4: residual = gn_proj(conv_proj(x)); x = relu(gn1(conv1(x)));
  x = relu(gn2(conv2(x))); x = gn3(conv3(x)); out = relu(residual + x).
- Flatten (h, w, c) -> Dense embedding -> + pos_embedding[spatial] + scale_embedding[scale] -> prepend
  CLS (which gets neither embedding, and mask 1).
- Pre-LN encoder blocks (LayerNorm eps 1e-6): masked multi-head self-attention, query divided by
  sqrt(head_dim) before the dot product, additive -1e10 wherever query or key is padding; MLP with the
  tanh approximation of GELU (jax's default). Final LayerNorm, CLS row, Dense head.

Normalisation statistics use the two-pass variance; flax computes E[x^2] - E[x]^2, which differs only by
float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from musiq_daemon.model.checkpoint import STD_CONV_KERNELS, standardize_kernel
from musiq_daemon.model.config import (
    HASH_GRID,
    NUM_SCALES,
    PATCH_SIZE,
    TOKEN_DIM,
    TOKEN_PIXELS,
    MusiqConfig,
    expected_shapes,
)

__all__ = ["forward", "raw_score"]

F32 = npt.NDArray[np.float32]

GROUPS = 32
GN_ROOT_EPSILON = 1e-6
GN_UNIT_EPSILON = 1e-4
LN_EPSILON = 1e-6
MASK_BIAS = -1e10
#: Patches per stem batch: bounds the im2col buffers (about 40 MB for the 7x7 root conv at 256).
STEM_CHUNK = 256
#: Attention logits computed at once (heads x queries x keys): bounds memory for long native scales.
_ATTENTION_ELEMENTS = 1 << 24
_UNIT = "block1/unit1/"


def forward(params: Mapping[str, npt.ArrayLike], config: MusiqConfig, tokens: npt.ArrayLike) -> F32:
    """Run MUSIQ on one token sequence and return the head output ``(num_classes,)`` (raw logits for AVA).

    ``tokens`` is ``(N, 3075)`` or ``(1, N, 3075)``; each row is [3072 pixels in (row, col, channel)
    order, spatial index, scale id, mask]. Rows with mask 0 are padding and do not affect the result
    (any finite content, any indices). ``params`` are keyed without the ``opt/target/`` prefix, as in
    :class:`Checkpoint`. Raises ValueError for non-finite tokens, an index out of range in a valid row,
    or parameters that do not match ``config``.
    """
    p = _checked_params(params, config)
    rows = _token_rows(tokens)
    pixels = rows[:, :TOKEN_PIXELS]
    # As in the official model: masks are truthiness, indices are truncated to integers.
    mask = rows[:, -1] != 0
    spatial = _indices(rows[:, -3], mask, HASH_GRID * HASH_GRID, "spatial index")
    scale = _indices(rows[:, -2], mask, NUM_SCALES, "scale id")

    features = np.concatenate(
        [_stem(p, pixels[start : start + STEM_CHUNK]) for start in range(0, len(rows), STEM_CHUNK)]
        or [np.zeros((0, p["embedding/kernel"].shape[0]), np.float32)]
    )
    x = _dense(features, p["embedding/kernel"], p["embedding/bias"])
    x = x + p["Transformer/posembed_input/pos_embedding"][0][spatial]
    x = x + p["Transformer/scaleembed_input/scale_embedding"][0][scale]
    x = np.concatenate([p["Transformer/cls"][0], x])
    mask = np.concatenate([np.ones(1, dtype=bool), mask])

    for i in range(config.num_layers):
        block = f"Transformer/encoderblock_{i}/"
        y = _layer_norm(x, p[block + "LayerNorm_0/scale"], p[block + "LayerNorm_0/bias"])
        x = x + _attention(y, mask, p, block + "MultiHeadDotProductAttention_1/")
        y = _layer_norm(x, p[block + "LayerNorm_2/scale"], p[block + "LayerNorm_2/bias"])
        mlp = block + "MlpBlock_3/"
        y = _gelu_tanh(_dense(y, p[mlp + "Dense_0/kernel"], p[mlp + "Dense_0/bias"]))
        x = x + _dense(y, p[mlp + "Dense_1/kernel"], p[mlp + "Dense_1/bias"])

    # LayerNorm is per row, so normalising only the CLS row gives the same CLS output.
    cls = _layer_norm(x[:1], p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    head: F32 = _dense(cls, p["head/kernel"], p["head/bias"])[0]
    return head


def raw_score(head_output: npt.ArrayLike) -> float:
    """The model's raw score: the value of a 1-class head, or sum_i softmax(logits)_i * i (i = 1..C).

    The second form is the AVA model's mean opinion score over its 10 score bins.
    """
    logits = np.asarray(head_output, dtype=np.float64)
    if logits.ndim == 2 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"expected a head output of shape (num_classes,), got {logits.shape}")
    if logits.size == 1:
        return float(logits[0])
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return float(weights @ np.arange(1, logits.size + 1, dtype=np.float64))


def _checked_params(params: Mapping[str, npt.ArrayLike], config: MusiqConfig) -> dict[str, F32]:
    """float32 copies of the parameters, with StdConv kernels already standardised."""
    p: dict[str, F32] = {}
    for key, shape in expected_shapes(config).items():
        if key not in params:
            raise ValueError(f"parameter {key} is missing")
        value = np.asarray(params[key], dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"parameter {key} has shape {value.shape}, expected {shape} for {config}")
        p[key] = value
    # The official StdConv standardises its kernel on every call; doing it once here is the same thing.
    for key in STD_CONV_KERNELS:
        p[key] = standardize_kernel(p[key])
    return p


def _token_rows(tokens: npt.ArrayLike) -> F32:
    rows = np.asarray(tokens, dtype=np.float32)
    if rows.ndim == 3 and rows.shape[0] == 1:
        rows = rows[0]
    if rows.ndim != 2 or rows.shape[1] != TOKEN_DIM:
        raise ValueError(
            f"expected tokens of shape (N, {TOKEN_DIM}) or (1, N, {TOKEN_DIM}), got {rows.shape}"
        )
    if not np.isfinite(rows).all():
        raise ValueError("tokens contain NaN or infinite values")
    return rows


def _indices(column: F32, mask: npt.NDArray[np.bool_], size: int, what: str) -> npt.NDArray[np.intp]:
    index = column.astype(np.intp)
    bad = mask & ((index < 0) | (index >= size))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"token row {row} has {what} {column[row]}, outside [0, {size})")
    # A padding row's index is never used for the result; clamp it so any value is harmless.
    clipped: npt.NDArray[np.intp] = np.clip(index, 0, size - 1)
    return clipped


def _dense(x: F32, kernel: F32, bias: F32) -> F32:
    out: F32 = x @ kernel + bias
    return out


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of TF/XLA 'SAME' padding: the odd extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def _windows(x: F32, kh: int, kw: int, stride: int, fill: float) -> F32:
    """SAME-padded sliding windows of an NHWC batch: (B, out_h, out_w, kh, kw, C)."""
    out_h, top, bottom = _same_padding(x.shape[1], kh, stride)
    out_w, left, right = _same_padding(x.shape[2], kw, stride)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    view = sliding_window_view(padded, (kh, kw), axis=(1, 2))  # (B, H', W', C, kh, kw)
    strided = view[:, ::stride, ::stride][:, :out_h, :out_w]
    windows: F32 = strided.transpose(0, 1, 2, 4, 5, 3)
    return windows


def _conv(x: F32, kernel: F32, stride: int = 1) -> F32:
    """NHWC x HWIO convolution with SAME padding, as im2col + one matmul."""
    kh, kw, cin, cout = kernel.shape
    if kh == kw == 1 and stride == 1:
        flat: F32 = x @ kernel.reshape(cin, cout)
        return flat
    windows = _windows(x, kh, kw, stride, 0.0)
    b, out_h, out_w = windows.shape[:3]
    # Window axes are (kh, kw, cin), the same order as the HWIO kernel's leading axes.
    cols = windows.reshape(b * out_h * out_w, kh * kw * cin)
    out: F32 = (cols @ kernel.reshape(kh * kw * cin, cout)).reshape(b, out_h, out_w, cout)
    return out


def _max_pool(x: F32, size: int, stride: int) -> F32:
    # Padding takes part as -inf, so it never wins the max (as in the official reduce_window).
    pooled: F32 = _windows(x, size, size, stride, -np.inf).max(axis=(3, 4))
    return pooled


def _group_norm(x: F32, scale: F32, bias: F32, epsilon: float) -> F32:
    """GroupNorm over (H, W, channels of the group), per patch."""
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)

    def group_mean(values: F32) -> F32:
        # Mean over positions per channel first (a fast contiguous reduction), then over each group's
        # channels; equal-sized groups make the mean of means the group mean.
        per_channel = values.mean(axis=1).reshape(b, GROUPS, c // GROUPS)
        per_group: F32 = np.repeat(per_channel.mean(axis=2), c // GROUPS, axis=1)[:, None, :]
        return per_group

    centered = flat - group_mean(flat)
    variance = group_mean(centered * centered)
    multiplier = scale.reshape(c) / np.sqrt(variance + np.float32(epsilon))
    out: F32 = (centered * multiplier + bias.reshape(c)).reshape(b, h, w, c)
    return out


def _relu(x: F32) -> F32:
    out: F32 = np.maximum(x, np.float32(0))
    return out


def _stem(p: Mapping[str, F32], pixels: F32) -> F32:
    """The per-patch ResNet stem: (B, 3072) patches -> (B, 8*8*256) features in (h, w, c) order."""
    x = pixels.reshape(-1, PATCH_SIZE, PATCH_SIZE, 3)
    x = _conv(x, p["conv_root/kernel"], stride=2)
    x = _relu(_group_norm(x, p["gn_root/scale"], p["gn_root/bias"], GN_ROOT_EPSILON))
    x = _max_pool(x, 3, 2)

    def conv_gn(y: F32, conv: str, gn: str) -> F32:
        y = _conv(y, p[f"{_UNIT}{conv}/kernel"])
        return _group_norm(y, p[f"{_UNIT}{gn}/scale"], p[f"{_UNIT}{gn}/bias"], GN_UNIT_EPSILON)

    # The unit changes the width 64 -> 256, so its residual path is projected.
    residual = conv_gn(x, "conv_proj", "gn_proj")
    y = _relu(conv_gn(x, "conv1", "gn1"))
    y = _relu(conv_gn(y, "conv2", "gn2"))
    y = conv_gn(y, "conv3", "gn3")
    out = _relu(residual + y)
    return out.reshape(len(out), -1)


def _layer_norm(x: F32, scale: F32, bias: F32) -> F32:
    centered = x - x.mean(axis=-1, keepdims=True)
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    out: F32 = centered / np.sqrt(variance + np.float32(LN_EPSILON)) * scale + bias
    return out


def _gelu_tanh(x: F32) -> F32:
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
    cdf = np.float32(0.5) * (np.float32(1) + np.tanh(inner))
    out: F32 = x * cdf
    return out


def _attention(x: F32, mask: npt.NDArray[np.bool_], p: Mapping[str, F32], prefix: str) -> F32:
    t, hidden = x.shape
    _, heads, head_dim = p[prefix + "query/kernel"].shape

    def project(name: str) -> F32:
        kernel = p[f"{prefix}{name}/kernel"].reshape(hidden, heads * head_dim)
        y = _dense(x, kernel, p[f"{prefix}{name}/bias"].reshape(-1))
        heads_first: F32 = y.reshape(t, heads, head_dim).transpose(1, 0, 2)
        return heads_first

    # The query is divided before the dot product, as the official attention does.
    q = project("query") / np.float32(math.sqrt(head_dim))
    k_t = project("key").transpose(0, 2, 1)
    v = project("value")
    context = np.empty((heads, t, head_dim), dtype=np.float32)
    step = max(1, _ATTENTION_ELEMENTS // (heads * t))
    for start in range(0, t, step):
        stop = min(start + step, t)
        # Padding is masked as query and as key; -1e10 underflows exp() to exactly 0 for valid queries.
        allowed = mask[start:stop, None] & mask[None, :]
        logits = q[:, start:stop] @ k_t + np.where(allowed, np.float32(0), np.float32(MASK_BIAS))
        logits -= logits.max(axis=-1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=-1, keepdims=True)
        context[:, start:stop] = weights @ v
    merged = context.transpose(1, 0, 2).reshape(t, heads * head_dim)
    return _dense(merged, p[prefix + "out/kernel"].reshape(heads * head_dim, hidden), p[prefix + "out/bias"])
