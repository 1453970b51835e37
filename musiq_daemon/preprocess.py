"""Turns a decoded RGB image into MUSIQ's multi-scale token sequence, matching the official pipeline.

The official preprocessing is TensorFlow code; the scores of the published checkpoints depend on its exact
numerics, so everything here reproduces those ops in float32 numpy rather than approximating them:

* normalization ``x = (u8 / 255) * 2 - 1`` happens first; resizing and zero padding happen in [-1, 1] space;
* the two fixed scales (longer side 224 and 384) use TensorFlow's non-antialiased Gaussian
  ``ScaleAndTranslate`` resize, which aliases when shrinking - that is what the model was trained on;
* patches are 32x32 with 'SAME' zero padding, and each one carries a hashed spatial index on a 10x10 grid,
  a scale id and a mask bit.

The native-resolution scale is what makes large photos expensive (one token per 32x32 block), so an explicit
:class:`ResolutionPolicy` can shrink the image beforehand; it changes scores and is meant to be recorded with
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from musiq_daemon.errors import DecodeError, UsageError
from musiq_daemon.model.config import HASH_GRID, PATCH_SIZE, TOKEN_DIM, TOKEN_PIXELS

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

#: Longer side of each fixed scale, in scale-id order (the official code sorts them ascending).
SCALE_LONGER_SIDES: tuple[int, ...] = (224, 384)
#: Rows reserved for each fixed scale: ceil(L/32)^2, filled up with all-zero (mask 0) rows.
SCALE_MAX_ROWS: tuple[int, ...] = tuple((-(-side // PATCH_SIZE)) ** 2 for side in SCALE_LONGER_SIDES)
#: Scale id of the native-resolution block, which follows the fixed scales.
NATIVE_SCALE_ID = len(SCALE_LONGER_SIDES)

# Columns of a token row after the pixels.
_COL_POS = TOKEN_PIXELS
_COL_SCALE = TOKEN_PIXELS + 1
_COL_MASK = TOKEN_PIXELS + 2

# Gaussian kernel of the official resize: radius 1.5, sigma = radius / 3. Kept as float32 because the
# reference evaluates spans and the |x| < radius cut-off in single precision.
_RADIUS = np.float32(1.5)
_HALF = np.float32(0.5)
# The kernel divides -x*x by 2*sigma^2 = 0.5 in double precision and rounds exp() back to float32.
_TWO_SIGMA_SQ = 0.5
# A span whose weights sum to less than this keeps all-zero weights instead of being normalized.
_MIN_WEIGHT_SUM = np.float32(1000.0) * np.finfo(np.float32).tiny


def _normalization_table() -> F32:
    # Same op order as the reference: (x / 255) * 2, then -1, each rounded to float32. A 256-entry table
    # turns normalization into one gather instead of three passes over the image.
    x = np.arange(256, dtype=np.float32)
    table: F32 = (x / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)
    return table


_NORMALIZE = _normalization_table()


# --------------------------------------------------------------------------------------------- resizing


@dataclass(frozen=True)
class _Spans:
    """Resampling of one axis as consecutive taps: output o = sum_k weight[k, o] * input[index[k, o]]."""

    index: npt.NDArray[np.intp]  # (taps, out) source index of each tap, clamped into the image
    weight: F32  # (taps, out) normalized weight of each tap, 0 for taps beyond the span


def _gaussian_weights(distance: F32) -> F32:
    """Kernel value at float32 distances, zero at and beyond the radius (the comparison is in float32)."""
    squared = distance * distance  # float32 product, as in the reference kernel
    value = np.exp(squared.astype(np.float64) * (-1.0 / _TWO_SIGMA_SQ)).astype(np.float32)
    return np.where(distance >= _RADIUS, np.float32(0.0), value)


def _gaussian_spans(in_size: int, out_size: int) -> _Spans:
    """Tap indices and weights resampling ``in_size`` pixels to ``out_size`` with the Gaussian kernel.

    Every step follows the float32 arithmetic of TensorFlow's ScaleAndTranslate: the scale is
    float32(out)/float32(in), its inverse is computed in double and rounded to float32, sample centres are
    (o + 0.5) * inverse, and tap distances are (src + 0.5) - centre, all in float32. In float64 a tap that
    lies exactly on the +-1.5 cut-off would switch sides and change patch values by up to 3e-2.
    Weights are divided by their float32 running sum (via its reciprocal, like the reference); no weight
    is dropped for being small and nothing is clamped, so the output is a plain convex combination.
    """
    scale = np.float32(out_size) / np.float32(in_size)
    # Multiplying by this rounded inverse is not the same as dividing by ``scale``: the two disagree in
    # the last bit for most sizes, which moves taps across the cut-off.
    inv_scale = np.float32(1.0 / float(scale))
    centre = (np.arange(out_size, dtype=np.float32) + _HALF) * inv_scale
    # A span starts at ceil(c - 1.5 - 0.5) and ends (inclusive) at floor(c + 1.5 - 0.5), clamped.
    start = np.clip(np.ceil(centre - _RADIUS - _HALF), 0, in_size - 1).astype(np.intp)
    end = np.clip(np.floor(centre + _RADIUS - _HALF), 0, in_size - 1).astype(np.intp) + 1
    # Centres outside the source image get an empty span (zero output); never happens for plain resizes.
    inside = (centre >= 0) & (centre <= np.float32(in_size))
    taps = int((end - start).max())  # at most 4: the support (c - 1.5, c + 1.5) holds 3 or 4 centres
    offsets = np.arange(taps, dtype=np.intp)[:, None]
    source = start[None, :] + offsets
    valid = (source < end[None, :]) & inside[None, :]
    distance = np.abs((source.astype(np.float32) + _HALF) - centre[None, :])
    weight = np.where(valid, _gaussian_weights(distance), np.float32(0.0))
    # Running float32 sum in tap order, as the reference accumulates it.
    total = np.zeros(out_size, dtype=np.float32)
    for k in range(taps):
        total += weight[k]
    usable = np.abs(total) >= _MIN_WEIGHT_SUM
    reciprocal = np.float32(1.0) / np.where(usable, total, np.float32(1.0))
    weight = np.where(usable[None, :], weight * reciprocal[None, :], np.float32(0.0))
    return _Spans(index=np.minimum(source, in_size - 1), weight=weight.astype(np.float32, copy=False))


def _flat_view(array: F32) -> F32:
    """(H, W, C) -> (H, W*C) without copying, so writes through the result land in ``array``."""
    flat = array.reshape(array.shape[0], -1)
    if not np.shares_memory(flat, array):
        raise ValueError("expected an array whose rows can be flattened in place")
    return flat


def _apply_spans(source: F32, spans: _Spans, channels: int, axis: int, out: F32) -> None:
    """``out = sum_k weight_k * source[index_k]`` along ``axis`` of 2-D (H, W*C) arrays, in tap order.

    Summing tap by tap reproduces the reference's accumulation order exactly. The banded form costs at most
    4 multiply-adds per output value, where a dense (out, in) weight matrix would cost ``in`` of them: tens
    of GFLOP per scale for a 4000x3000 photo instead of a few MFLOP. Columns are addressed per channel
    (index * C + c) so that every numpy inner loop runs over a whole row rather than over 3 channels.
    """
    index, weight = spans.index, spans.weight
    if axis == 1:
        channel = np.arange(channels, dtype=np.intp)
        index = (index[:, :, None] * channels + channel).reshape(index.shape[0], -1)
        weight = np.repeat(weight, channels, axis=1)
    else:
        weight = weight[:, :, None]
    gathered = np.empty_like(out)
    for k in range(index.shape[0]):
        np.take(source, index[k], axis=axis, out=gathered)
        if k == 0:
            np.multiply(gathered, weight[k], out=out)
        else:
            np.multiply(gathered, weight[k], out=gathered)
            out += gathered


def _resize_into(image: F32, out: F32) -> None:
    """Gaussian resize of ``image`` (H, W, C) into ``out`` (h, w, C): rows first, then columns.

    The reference applies the two passes in this order and rounds the intermediate to float32; keeping
    both makes the result identical to it, not merely close.
    """
    channels = image.shape[2]
    rows = _gaussian_spans(image.shape[0], out.shape[0])
    cols = _gaussian_spans(image.shape[1], out.shape[1])
    intermediate = np.empty((out.shape[0], image.shape[1] * channels), dtype=np.float32)
    _apply_spans(image.reshape(image.shape[0], -1), rows, channels, 0, intermediate)
    _apply_spans(intermediate, cols, channels, 1, _flat_view(out))


def resize_gaussian(image: F32, out_h: int, out_w: int) -> F32:
    """Resize a float32 (H, W, 3) image like ``tf.image.resize(..., method="gaussian", antialias=False)``.

    Separable ScaleAndTranslate with a Gaussian kernel (radius 1.5, sigma 0.5) at kernel scale 1, i.e. no
    low-pass filtering when shrinking; taps outside the image are dropped and the rest renormalized.
    """
    if image.ndim != 3 or min(image.shape[0], image.shape[1], out_h, out_w) <= 0:
        raise ValueError(f"cannot resize an image of shape {image.shape} to {out_h}x{out_w}")
    out = np.empty((out_h, out_w, image.shape[2]), dtype=np.float32)
    _resize_into(np.asarray(image, dtype=np.float32), out)
    return out


def aspect_resize_size(h: int, w: int, longer_side: int) -> tuple[int, int]:
    """Size of an aspect-preserving resize whose longer side becomes ``longer_side``.

    Reproduces the reference's float32 arithmetic: r = float32(L) / float32(max(h, w)) and each side is
    round-half-to-even(float32(side) * r). Where that rounds a very thin side to 0 the reference would fail
    (a zero-sized resize is an error there); one pixel is kept instead so such images still get scored.
    """
    ratio = np.float32(longer_side) / np.float32(max(h, w))
    new_h = int(np.rint(np.float32(h) * ratio))
    new_w = int(np.rint(np.float32(w) * ratio))
    return max(new_h, 1), max(new_w, 1)


# --------------------------------------------------------------------------------------------- patches


def _grid(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    """Patch counts and 'SAME' padding before the image: count = ceil(size/patch), before = pad // 2."""
    count_h, count_w = -(-h // patch), -(-w // patch)
    return count_h, count_w, (count_h * patch - h) // 2, (count_w * patch - w) // 2


def _canvas_to_rows(canvas: F32, count_h: int, count_w: int, patch: int, rows: F32) -> None:
    """Copy a padded (count_h*p, count_w*p, C) canvas into ``rows`` (count_h*count_w, p*p*C), row-major."""
    channels = canvas.shape[2]
    blocks = canvas.reshape(count_h, patch, count_w, patch, channels).transpose(0, 2, 1, 3, 4)
    # ``rows`` may be a column slice of the token array: reshaping it this way is still a view.
    target = rows.reshape(count_h, count_w, patch, patch, channels)
    if not np.shares_memory(target, rows):
        raise ValueError("patch rows must be writable in place")
    target[...] = blocks


def extract_patches(image: F32, patch: int = PATCH_SIZE) -> tuple[F32, int, int]:
    """Non-overlapping ``patch`` x ``patch`` patches with 'SAME' zero padding, like
    ``tf.image.extract_patches(..., strides=patch, padding="SAME")``.

    Returns the patches as (count_h * count_w, patch*patch*C) rows in row-major grid order, each flattened
    in (row, col, channel) order, plus count_h and count_w. Zero padding is mid grey in [-1, 1] space.
    """
    h, w, channels = image.shape
    count_h, count_w, top, left = _grid(h, w, patch)
    canvas = np.zeros((count_h * patch, count_w * patch, channels), dtype=np.float32)
    canvas[top : top + h, left : left + w] = image
    rows = np.empty((count_h * count_w, patch * patch * channels), dtype=np.float32)
    _canvas_to_rows(canvas, count_h, count_w, patch, rows)
    return rows, count_h, count_w


def spatial_hash(count_h: int, count_w: int, grid: int = HASH_GRID) -> I64:
    """Hashed spatial index of every patch (row-major), in [0, grid*grid).

    The reference maps the patch grid onto a ``grid`` x ``grid`` table with TensorFlow's legacy
    nearest-neighbour resize: index i -> min(floor(float32(i) * float32(grid / count)), grid - 1). The
    rounding of that float32 product is part of the contract: exact integer arithmetic gives different
    indices from count 205 on, and a float64 product already at count 154 (77 * 10/154 lands just below 5).
    """

    def axis(count: int) -> I64:
        step = np.float32(grid) / np.float32(count)
        hashed: I64 = np.floor(np.arange(count, dtype=np.float32) * step).astype(np.int64)
        return np.minimum(hashed, np.int64(grid - 1))

    index: I64 = (axis(count_h)[:, None] * grid + axis(count_w)[None, :]).reshape(-1)
    return index


# --------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class PatchSequence:
    """MUSIQ model input for one image.

    ``tokens`` is float32 (N, 3075); each row is [3072 pixels, spatial index, scale id, mask]. The blocks are
    [scale 224 | scale 384 | native], ``scale_rows`` gives each block's row count including its all-zero
    padding rows (49, 144, native count).
    """

    tokens: F32
    scale_rows: tuple[int, int, int]
    native_grid: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def _check_rgb(rgb: npt.NDArray[Any]) -> tuple[int, int]:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DecodeError(
            f"expected an RGB uint8 image of shape (height, width, 3), got {rgb.dtype} {tuple(rgb.shape)}"
        )
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    if h == 0 or w == 0:
        raise DecodeError(f"the image is empty ({w}x{h} pixels)")
    return h, w


def _fill_block(tokens: F32, first: int, count_h: int, count_w: int, scale_id: int) -> None:
    rows = slice(first, first + count_h * count_w)
    tokens[rows, _COL_POS] = spatial_hash(count_h, count_w)
    tokens[rows, _COL_SCALE] = scale_id
    tokens[rows, _COL_MASK] = 1.0


def make_tokens(rgb: U8) -> PatchSequence:
    """The official multi-scale token sequence of an RGB uint8 (H, W, 3) image.

    Raises :class:`DecodeError` for an empty image or one that is not RGB uint8.
    """
    h, w = _check_rgb(rgb)
    count_h, count_w, top, left = _grid(h, w, PATCH_SIZE)
    native_rows = count_h * count_w
    scale_rows = (*SCALE_MAX_ROWS, native_rows)
    # Zeroed memory: padding rows of the fixed scales are exactly the all-zero, mask-0 rows they need.
    tokens = np.zeros((sum(scale_rows), TOKEN_DIM), dtype=np.float32)

    # Normalize once, straight into the zero-padded native canvas; its interior is the resize source.
    canvas = np.zeros((count_h * PATCH_SIZE, count_w * PATCH_SIZE, 3), dtype=np.float32)
    image = canvas[top : top + h, left : left + w]
    np.take(_NORMALIZE, rgb, out=image, mode="clip")

    first = 0
    for scale_id, (side, max_rows) in enumerate(zip(SCALE_LONGER_SIDES, SCALE_MAX_ROWS, strict=True)):
        rh, rw = aspect_resize_size(h, w, side)
        ch, cw, rtop, rleft = _grid(rh, rw, PATCH_SIZE)
        small = np.zeros((ch * PATCH_SIZE, cw * PATCH_SIZE, 3), dtype=np.float32)
        _resize_into(image, small[rtop : rtop + rh, rleft : rleft + rw])
        _canvas_to_rows(small, ch, cw, PATCH_SIZE, tokens[first : first + ch * cw, :TOKEN_PIXELS])
        _fill_block(tokens, first, ch, cw, scale_id)
        first += max_rows

    _canvas_to_rows(canvas, count_h, count_w, PATCH_SIZE, tokens[first:, :TOKEN_PIXELS])
    _fill_block(tokens, first, count_h, count_w, NATIVE_SCALE_ID)
    return PatchSequence(
        tokens=tokens,
        scale_rows=(scale_rows[0], scale_rows[1], scale_rows[2]),
        native_grid=(count_h, count_w),
        image_size=(h, w),
    )


def pad_tokens(seq_tokens: F32, length: int) -> F32:
    """Append all-zero (mask 0) rows up to ``length`` rows, e.g. to bucket sequence lengths.

    Masked rows are ignored by attention, so padding leaves the model output unchanged. Returns the input
    itself when it already has ``length`` rows.
    """
    n = seq_tokens.shape[0]
    if length < n:
        raise ValueError(f"cannot pad {n} tokens down to {length}")
    if length == n:
        return seq_tokens
    out = np.zeros((length, seq_tokens.shape[1]), dtype=np.float32)
    out[:n] = seq_tokens
    return out


# --------------------------------------------------------------------------------------------- resolution

_MIN_MAX_SIDE = PATCH_SIZE
_POLICY_RE = re.compile(r"(?:max_side=)?(\d+)")


@dataclass(frozen=True)
class ResolutionPolicy:
    """Upper bound on the image's longer side before tokenization (``None``: full resolution).

    The native scale costs one token per 32x32 block and attention grows with the square of the token
    count, so large photos are usually capped. A cap changes scores, hence :meth:`describe` to record it.
    """

    max_side: int | None = None

    def __post_init__(self) -> None:
        m = self.max_side
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < _MIN_MAX_SIDE):
            raise UsageError(f"max_side must be an integer >= {_MIN_MAX_SIDE}, got {m!r}")

    def describe(self) -> str:
        return "full" if self.max_side is None else f"max_side={self.max_side}"

    @classmethod
    def parse(cls, text: str) -> ResolutionPolicy:
        """Accept "full", "max_side=N" or "N" with N >= 32."""
        cleaned = text.strip().lower()
        if cleaned == "full":
            return cls(None)
        match = _POLICY_RE.fullmatch(cleaned)
        if match is None or int(match.group(1)) < _MIN_MAX_SIDE:
            raise UsageError(
                f'invalid resolution "{text}": use "full", "max_side=N" or "N" with N >= {_MIN_MAX_SIDE}'
            )
        return cls(int(match.group(1)))

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) after the cap: unchanged if it fits, else longer side = max_side, aspect ratio kept."""
        m = self.max_side
        longer = max(h, w)
        if m is None or longer <= m:
            return h, w
        shorter = max(1, round(min(h, w) * m / longer))
        return (m, shorter) if h >= w else (shorter, m)


def limit_resolution(rgb: U8, policy: ResolutionPolicy) -> U8:
    """Apply ``policy`` to an RGB uint8 image; returns the input object itself when nothing changes.

    Shrinking uses Lanczos with antialiasing: the official Gaussian resize does not low-pass filter, which
    would alias badly at large reduction factors. The result of a shrink may be read-only.
    """
    h, w = _check_rgb(rgb)
    th, tw = policy.target_size(h, w)
    if (th, tw) == (h, w):
        return rgb
    small = Image.fromarray(np.ascontiguousarray(rgb)).resize((tw, th), Image.Resampling.LANCZOS)
    out: U8 = np.asarray(small, dtype=np.uint8)
    return out
