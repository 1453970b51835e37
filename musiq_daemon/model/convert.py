"""Turn MUSIQ parameters into a LiteRT ``.tflite`` model (fp32, fp16 or dynamic-range int8).

The forward pass is written with plain TensorFlow ops (no Keras layers) so that every op lowers to a
builtin TFLite op that XNNPACK runs: the runtime has no Flex (Select-TF) kernels. Choices that keep it
that way, and keep the exported graph equal to the official model:

* The embedding look-ups (spatial hash, scale id) are one-hot rows times a table - an exact fully-connected
  op - instead of GATHER, which XNNPACK does not delegate and which would split the graph.
* Two signatures: ``stem`` (the per-token ResNet stem, embedding and look-ups) and ``encoder`` (the
  transformer and head). The runtime feeds the stem fixed-size chunks of a photo's tokens, which bounds
  the largest activations of the model (the stem's) to a few MB whatever the photo's size.
* GroupNorm takes per-channel statistics over the contiguous spatial axes, averages them per group on
  the tiny [B, C] tensor (E[x^2] - E[x]^2) and applies one multiply-add per element; the StdConv weight
  standardisation and the 1/sqrt(head_dim) query scale are folded into the exported weights. (A mean
  over the non-adjacent axes of a reshaped [B, HW, G, C/G] tensor, the textbook form, made the stem's
  five GroupNorms half of the whole inference time under XNNPACK.)
* Padding rows (mask 0) are hidden from attention by an additive bias on their keys, so a padded input
  gives the output of the unpadded one (the runtime pads to bucketed lengths).
* The last encoder block only computes the CLS row after its attention keys/values, because the head
  reads nothing else (per-token ops make this exact).

TensorFlow is imported lazily, only here: the scoring runtime never needs it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from musiq_daemon.errors import ConversionError
from musiq_daemon.model.checkpoint import STD_CONV_KERNELS, standardize_kernel
from musiq_daemon.model.config import (
    ENCODER_SIGNATURE,
    GRAPH_FORMAT,
    HASH_GRID,
    NUM_SCALES,
    PATCH_SIZE,
    STEM_OUT_CHANNELS,
    STEM_SIGNATURE,
    TOKEN_DIM,
    TOKEN_PIXELS,
    MusiqConfig,
    expected_shapes,
)
from musiq_daemon.model.reference import GN_ROOT_EPSILON, GN_UNIT_EPSILON, GROUPS, LN_EPSILON
from musiq_daemon.native_log import capture_native_stderr
from musiq_daemon.version import __version__

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "dynamic-int8")

#: Keys the caller must supply in ``metadata``: they make every score traceable to its source weights.
REQUIRED_METADATA = ("model_id", "checkpoint_file", "checkpoint_sha256")
#: Keys the converter itself records in the JSON; ``metadata`` may not set them.
COMPUTED_METADATA = (
    "variant",
    "graph_format",
    "num_classes",
    "config",
    "musiq_daemon_version",
    "tensorflow_version",
    "tflite_file",
    "tflite_sha256",
    "tflite_size",
    "created_at",
    "conversion_seconds",
    "quantization",
    "input",
    "output",
)

INPUT_LAYOUT = (
    f"signature '{STEM_SIGNATURE}': tokens float32 [B, {TOKEN_DIM}], B dynamic; one row per token: "
    f"{TOKEN_PIXELS} pixel values in [-1, 1] ({PATCH_SIZE}x{PATCH_SIZE}x3 in row, column, channel order), "
    f"spatial hash index (0..{HASH_GRID * HASH_GRID - 1}), scale id (0..{NUM_SCALES - 1}), mask (unused "
    f"here). Signature '{ENCODER_SIGNATURE}': embeddings float32 [N, hidden] (the stem's output for a "
    "photo's tokens), mask float32 [N] (1 token, 0 padding)"
)
OUTPUT_LAYOUT = (
    f"'{STEM_SIGNATURE}': embeddings float32 [B, hidden]; '{ENCODER_SIGNATURE}': scores float32 "
    "[1, num_classes], the head output (a MOS for 1 class, logits over score bins 1..10 for 10)"
)

#: Layers the dynamic-int8 variant keeps in float32 (regular expressions over layer names; see
#: :func:`quantize_dynamic`): each block's attention output projection, which carries the largest share
#: of the int8 error, for 6 MB and a few milliseconds. Chosen by measuring each layer group's share of the
#: error against fp32 on 42 real photos (benchmarks/bench_fidelity.py; numbers in models_tflite/README.md).
KEEP_FLOAT: tuple[str, ...] = (r"block\d+/out/",)

_TF_MISSING = "converting needs TensorFlow: run .venv/bin/pip install -e '.[convert]' in the musiqd checkout"
_QUANTIZER_MISSING = (
    "converting to dynamic-int8 needs ai-edge-quantizer: "
    "run .venv/bin/pip install -e '.[convert]' in the musiqd checkout"
)

# Added to the attention logits of padding keys. The official model adds -1e10; any value that drives
# exp() to exactly zero gives the same result, and this one stays finite in IEEE half precision, should
# the runtime ever run the graph in fp16 (XNNPACK can, on CPUs with fp16 arithmetic): -1e10 would become
# -inf there, and 0 * -inf = NaN for every real token.
_MASK_BIAS = -3.0e4


@dataclass(frozen=True)
class ModelInfo:
    """A converted model: the ``.tflite`` file, its JSON description and what that JSON holds."""

    path: Path
    metadata_path: Path
    variant: str
    metadata: Mapping[str, Any] = field(hash=False)


def convert_checkpoint(
    params: Mapping[str, npt.NDArray[np.float32]],
    config: MusiqConfig,
    *,
    variant: str,
    out_path: Path,
    metadata: Mapping[str, object],
) -> ModelInfo:
    """Convert MUSIQ ``params`` (keys without ``opt/target/``) to ``out_path`` plus ``<stem>.json``.

    ``metadata`` must name the model and its source checkpoint (:data:`REQUIRED_METADATA`); anything else
    in it is recorded too. Raises :class:`ConversionError` (one line) on any failure.
    """
    if variant not in VARIANTS:
        raise ConversionError(f"unknown model variant '{variant}': choose one of {', '.join(VARIANTS)}")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ConversionError(f"conversion metadata lacks {', '.join(missing)}")
    clashing = sorted(set(metadata) & set(COMPUTED_METADATA))
    if clashing:
        raise ConversionError(
            f"conversion metadata may not set {', '.join(clashing)}: the converter records it"
        )
    _check_params(params, config)
    tf = _import_tensorflow()

    started = time.monotonic()
    with _quiet_tensorflow(tf):
        flatbuffer = _convert(tf, _export_weights(params, config), config, variant)
    _check_builtin_only(flatbuffer)
    _smoke_test(flatbuffer, config)

    computed: dict[str, Any] = {
        "variant": variant,
        "graph_format": GRAPH_FORMAT,
        "num_classes": config.num_classes,
        "config": asdict(config),
        "musiq_daemon_version": __version__,
        "tensorflow_version": tf.__version__,
        "tflite_file": out_path.name,
        "tflite_sha256": hashlib.sha256(flatbuffer).hexdigest(),
        "tflite_size": len(flatbuffer),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conversion_seconds": round(time.monotonic() - started, 1),
        "quantization": describe_quantization(variant),
        "input": INPUT_LAYOUT,
        "output": OUTPUT_LAYOUT,
    }
    record = {**metadata, **computed}

    metadata_path = out_path.with_suffix(".json")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Model first, description second: an interruption in between leaves a JSON whose checksum no
        # longer matches, which the model store reports as "re-create it" - never a silently wrong model.
        _write_atomically(out_path, flatbuffer)
        text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
        _write_atomically(metadata_path, text.encode("utf-8"))
    except OSError as exc:
        raise ConversionError(f"cannot write {out_path}: {exc}") from None
    log.info(
        "converted %s (%s): %d bytes in %.0f s",
        record["model_id"],
        variant,
        len(flatbuffer),
        computed["conversion_seconds"],
    )
    return ModelInfo(
        path=out_path, metadata_path=metadata_path, variant=variant, metadata=MappingProxyType(record)
    )


def _check_params(params: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig) -> None:
    for key, shape in expected_shapes(config).items():
        if key not in params:
            raise ConversionError(f"parameter {key} is missing for {config}")
        if tuple(params[key].shape) != shape:
            raise ConversionError(f"parameter {key} has shape {params[key].shape}, expected {shape}")


def _import_tensorflow() -> Any:
    # TF reads this once, when its native logging starts: it has to be set before the import. Level 2
    # drops INFO and WARNING lines (a dozen per conversion) and keeps errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with capture_native_stderr():  # oneDNN's notice, printed natively at import
            import tensorflow as tf
    except ImportError:
        raise ConversionError(_TF_MISSING) from None
    return tf


@contextlib.contextmanager
def _quiet_tensorflow(tf: Any) -> Iterator[None]:
    """Lower TF's Python-side loggers to ERROR for the duration of a conversion."""
    loggers = [tf.get_logger(), logging.getLogger("absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# --------------------------------------------------------------------------------------------- weights


def _export_weights(
    params: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig
) -> dict[str, npt.NDArray[np.float32]]:
    """The tensors the exported graph uses: checkpoint weights rearranged for plain matmuls."""
    p = {key: np.asarray(value, dtype=np.float32) for key, value in params.items()}
    w: dict[str, npt.NDArray[np.float32]] = {}
    for key in STD_CONV_KERNELS:
        w[key] = standardize_kernel(p[key])
    for key in expected_shapes(config):
        if key.startswith(("gn_", "block1/")) and not key.endswith("kernel"):
            w[key] = p[key].reshape(-1)  # (1,1,1,C) -> (C,): broadcasts over NHWC
    w["embedding/kernel"] = p["embedding/kernel"]
    w["embedding/bias"] = p["embedding/bias"]
    # One table for both look-ups: rows 0..99 spatial hash, then one row per scale.
    w["lookup"] = np.concatenate(
        [
            p["Transformer/posembed_input/pos_embedding"][0],
            p["Transformer/scaleembed_input/scale_embedding"][0],
        ]
    )
    w["cls"] = p["Transformer/cls"].reshape(1, -1)

    h = config.hidden_size
    query_scale = np.float32(1.0 / np.sqrt(config.head_dim))  # a power of two for 64: folding is exact
    for i in range(config.num_layers):
        src = f"Transformer/encoderblock_{i}/"
        att = f"{src}MultiHeadDotProductAttention_1/"
        dst = f"block{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{dst}{ln}/scale"] = p[f"{src}{ln}/scale"]
            w[f"{dst}{ln}/bias"] = p[f"{src}{ln}/bias"]
        # Heads side by side: (hidden, heads, head_dim) -> (hidden, heads * head_dim).
        w[f"{dst}query/kernel"] = p[f"{att}query/kernel"].reshape(h, h) * query_scale
        w[f"{dst}query/bias"] = p[f"{att}query/bias"].reshape(h) * query_scale
        # Keys and values in one matmul: one pass over the activations instead of two.
        w[f"{dst}kv/kernel"] = np.concatenate(
            [p[f"{att}key/kernel"].reshape(h, h), p[f"{att}value/kernel"].reshape(h, h)], axis=1
        )
        w[f"{dst}kv/bias"] = np.concatenate(
            [p[f"{att}key/bias"].reshape(h), p[f"{att}value/bias"].reshape(h)]
        )
        w[f"{dst}out/kernel"] = p[f"{att}out/kernel"].reshape(h, h)
        w[f"{dst}out/bias"] = p[f"{att}out/bias"]
        for dense in ("Dense_0", "Dense_1"):
            w[f"{dst}{dense}/kernel"] = p[f"{src}MlpBlock_3/{dense}/kernel"]
            w[f"{dst}{dense}/bias"] = p[f"{src}MlpBlock_3/{dense}/bias"]
    w["encoder_norm/scale"] = p["Transformer/encoder_norm/scale"]
    w["encoder_norm/bias"] = p["Transformer/encoder_norm/bias"]
    w["head/kernel"] = p["head/kernel"]
    w["head/bias"] = p["head/bias"]
    return w


# ----------------------------------------------------------------------------------------------- graph


class Graph:
    """MUSIQ's forward pass in plain TensorFlow ops, part by part.

    The model's two signatures are composed of these parts (:func:`_build_module`); the benchmarks time
    each part on its own, converted with the same settings, for the per-op table.
    """

    def __init__(self, tf: Any, weights: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig) -> None:
        self.tf = tf
        self.config = config
        # Variables, frozen into constants by the converter: with tf.constant the full model took twice
        # as long to convert and three times the memory (5.4 GB), too much for the boxes this runs on.
        self.variables = {
            key: tf.Variable(value, trainable=False, name=key.replace("/", "."))
            for key, value in weights.items()
        }
        self._lookup_ids = np.arange(HASH_GRID * HASH_GRID + NUM_SCALES, dtype=np.float32)

    def const(self, key: str) -> Any:
        return self.variables[key]

    def group_norm(self, x: Any, prefix: str, eps: float) -> Any:
        """GroupNorm: statistics per channel first (a reduction over the contiguous spatial axes, which
        XNNPACK runs fast), then per group on the tiny [B, C] tensor, with E[x^2] - E[x]^2 as flax computes
        it; normalisation, scale and bias fold into one multiply-add per element. Broadcasting happens
        inside MUL and ADD: a BROADCAST_TO would split the graph into several XNNPACK partitions."""
        tf = self.tf
        channels = x.shape[-1]
        group_shape = [-1, GROUPS, channels // GROUPS]
        mean = tf.reduce_mean(tf.reshape(tf.reduce_mean(x, axis=[1, 2]), group_shape), 2, keepdims=True)
        mean_sq = tf.reduce_mean(
            tf.reshape(tf.reduce_mean(tf.square(x), axis=[1, 2]), group_shape), 2, keepdims=True
        )
        inv = tf.math.rsqrt(tf.nn.relu(mean_sq - tf.square(mean)) + eps)  # [B, G, 1]
        scale = inv * tf.reshape(self.const(f"{prefix}/scale"), [GROUPS, channels // GROUPS])
        shift = tf.reshape(self.const(f"{prefix}/bias"), [GROUPS, channels // GROUPS]) - mean * scale
        return x * tf.reshape(scale, [-1, 1, 1, channels]) + tf.reshape(shift, [-1, 1, 1, channels])

    def conv(self, x: Any, key: str, stride: int) -> Any:
        # Named after the layer: the op's output tensor carries the name, and quantization recipes
        # select layers by it (see QUANTIZE_EXCEPT).
        with self.tf.name_scope(key.removesuffix("/kernel")):
            return self.tf.nn.conv2d(x, self.const(key), strides=stride, padding="SAME")

    def layer_norm(self, x: Any, prefix: str) -> Any:
        tf = self.tf
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
        normed = centred * tf.math.rsqrt(variance + LN_EPSILON)
        return normed * self.const(f"{prefix}/scale") + self.const(f"{prefix}/bias")

    def dense(self, x: Any, prefix: str) -> Any:
        with self.tf.name_scope(prefix):  # named after the layer, like conv()
            return self.tf.matmul(x, self.const(f"{prefix}/kernel")) + self.const(f"{prefix}/bias")

    def split_heads(self, x: Any) -> Any:
        """[T, hidden] -> [heads, T, head_dim]"""
        shape = [-1, self.config.num_heads, self.config.head_dim]
        return self.tf.transpose(self.tf.reshape(x, shape), [1, 0, 2])

    def root(self, pixels: Any) -> Any:
        """[B, 32, 32, 3] -> [B, 8, 8, 64]: the root convolution, its GroupNorm and the max pool."""
        tf = self.tf
        x = tf.nn.relu(self.group_norm(self.conv(pixels, "conv_root/kernel", 2), "gn_root", GN_ROOT_EPSILON))
        return tf.nn.max_pool2d(x, ksize=3, strides=2, padding="SAME")

    def unit(self, x: Any) -> Any:
        """[B, 8, 8, 64] -> [B, 16384]: the bottleneck unit, flattened per token."""
        tf, unit, eps = self.tf, "block1/unit1/", GN_UNIT_EPSILON
        residual = self.group_norm(self.conv(x, f"{unit}conv_proj/kernel", 1), f"{unit}gn_proj", eps)
        y = tf.nn.relu(self.group_norm(self.conv(x, f"{unit}conv1/kernel", 1), f"{unit}gn1", eps))
        y = tf.nn.relu(self.group_norm(self.conv(y, f"{unit}conv2/kernel", 1), f"{unit}gn2", eps))
        y = self.group_norm(self.conv(y, f"{unit}conv3/kernel", 1), f"{unit}gn3", eps)
        x = tf.nn.relu(residual + y)
        return tf.reshape(x, [-1, x.shape[1] * x.shape[2] * STEM_OUT_CHANNELS])

    def attention(self, x: Any, key_bias: Any, prefix: str, cls_only: bool) -> Any:
        """The residual attention half of an encoder block."""
        hidden = self.config.hidden_size
        h = self.layer_norm(x, f"{prefix}LayerNorm_0")
        kv = self.dense(h, f"{prefix}kv")
        keys, values = self.split_heads(kv[:, :hidden]), self.split_heads(kv[:, hidden:])
        if cls_only:  # the head reads the CLS row only; per-token ops make this exact
            x, h = x[:1], h[:1]
        queries = self.split_heads(self.dense(h, f"{prefix}query"))
        return x + self.dense(self.attend(queries, keys, values, key_bias), f"{prefix}out")

    def attend(self, queries: Any, keys: Any, values: Any, key_bias: Any) -> Any:
        """softmax(Q K^T + bias) V per head ([heads, T, head_dim] each), heads merged: [T, hidden]."""
        tf = self.tf
        attention = tf.nn.softmax(tf.matmul(queries, keys, transpose_b=True) + key_bias, axis=-1)
        merged = tf.transpose(tf.matmul(attention, values), [1, 0, 2])
        return tf.reshape(merged, [-1, self.config.hidden_size])

    def mlp(self, x: Any, prefix: str) -> Any:
        """The residual MLP half of an encoder block."""
        h = self.layer_norm(x, f"{prefix}LayerNorm_2")
        h = self.tf.nn.gelu(self.dense(h, f"{prefix}Dense_0"), approximate=True)
        return x + self.dense(h, f"{prefix}Dense_1")

    def stem(self, tokens: Any) -> Any:
        """Token rows [B, 3075] -> embeddings [B, hidden]."""
        tf = self.tf
        pixels = tf.reshape(tokens[:, :TOKEN_PIXELS], [-1, PATCH_SIZE, PATCH_SIZE, 3])
        spatial = tokens[:, TOKEN_PIXELS : TOKEN_PIXELS + 1]
        scale = tokens[:, TOKEN_PIXELS + 1 : TOKEN_PIXELS + 2] + np.float32(HASH_GRID * HASH_GRID)
        # Exact one-hot rows from float ids: relu(1 - |id - j|) is 1 at j == id and 0 elsewhere. A one-hot
        # matmul instead of GATHER, which XNNPACK does not take and which would split the graph.
        ids = self._lookup_ids
        onehot = tf.nn.relu(1.0 - tf.abs(spatial - ids)) + tf.nn.relu(1.0 - tf.abs(scale - ids))
        features = self.unit(self.root(pixels))
        with tf.name_scope("lookup"):
            looked_up = tf.matmul(onehot, self.const("lookup"))
        return self.dense(features, "embedding") + looked_up

    def encoder(self, embeddings: Any, mask: Any) -> Any:
        """Embeddings [N, hidden] and mask [N] -> head output [1, num_classes]."""
        tf, layers = self.tf, self.config.num_layers
        x = tf.concat([self.const("cls"), embeddings], axis=0)
        # The CLS token is always attended to; padding keys get a large negative logit.
        key_bias = tf.reshape((1.0 - mask) * _MASK_BIAS, [1, 1, -1])
        key_bias = tf.concat([tf.zeros([1, 1, 1]), key_bias], axis=2)
        for i in range(layers):
            x = self.mlp(self.attention(x, key_bias, f"block{i}/", cls_only=i == layers - 1), f"block{i}/")
        return self.dense(self.layer_norm(x[:1], "encoder_norm"), "head")


def _build_module(tf: Any, weights: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig) -> Any:
    """A ``tf.Module`` with the model's two signatures.

    ``stem`` maps token rows [B, 3075] to embeddings [B, hidden] (the ResNet stem, the embedding dense
    layer and the two look-ups: all per token, so the runtime runs it on fixed-size chunks of a photo's
    tokens and never holds the stem's activations for a whole photo); ``encoder`` maps the embeddings
    [N, hidden] and the mask [N] to the head output [1, num_classes].
    """
    graph = Graph(tf, weights, config)

    # The functions' names become the signature keys; their dict keys name the outputs.
    def stem(tokens: Any) -> dict[str, Any]:
        return {"embeddings": graph.stem(tokens)}

    def encoder(embeddings: Any, mask: Any) -> dict[str, Any]:
        return {"scores": graph.encoder(embeddings, mask)}

    assert (stem.__name__, encoder.__name__) == (STEM_SIGNATURE, ENCODER_SIGNATURE)
    module = tf.Module(name="musiq")
    module.parameters = graph.variables  # tracked, so the converter finds and freezes them
    module.stem = tf.function(
        stem, input_signature=[tf.TensorSpec([None, TOKEN_DIM], tf.float32, name="tokens")]
    )
    module.encoder = tf.function(
        encoder,
        input_signature=[
            tf.TensorSpec([None, config.hidden_size], tf.float32, name="embeddings"),
            tf.TensorSpec([None], tf.float32, name="mask"),
        ],
    )
    return module


def convert_signature(
    params: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig, *, variant: str, signature: str
) -> bytes:
    """One signature of the model alone, as a single-subgraph ``.tflite`` (nothing is written).

    For inspection: LiteRT's Python API shows the execution plan (which nodes a delegate took) of a
    model's first subgraph only, so delegation checks and per-op profiles look at each part on its own.
    It is the very graph :func:`convert_checkpoint` puts into the model file.
    """
    if signature not in (STEM_SIGNATURE, ENCODER_SIGNATURE):
        raise ConversionError(f"unknown signature '{signature}'")
    _check_params(params, config)
    tf = _import_tensorflow()
    with _quiet_tensorflow(tf):
        return _convert(tf, _export_weights(params, config), config, variant, (signature,))


def convert_part(
    params: Mapping[str, npt.NDArray[np.float32]],
    config: MusiqConfig,
    *,
    variant: str,
    part: Callable[..., Any],
    inputs: Sequence[Sequence[int | None]],
) -> bytes:
    """``part(graph, *tensors)`` (a piece of :class:`Graph`) alone as a ``.tflite``, converted with the
    settings of ``variant``: the benchmarks time the model op by op with it (nothing is written). The
    inputs are named ``input_0``, ``input_1``... in the order of ``inputs``."""
    _check_params(params, config)
    tf = _import_tensorflow()
    with _quiet_tensorflow(tf):
        graph = Graph(tf, _export_weights(params, config), config)
        module = tf.Module(name="musiq_part")
        module.parameters = graph.variables
        function = tf.function(
            lambda *tensors: part(graph, *tensors),
            input_signature=[
                tf.TensorSpec(list(shape), tf.float32, name=f"input_{i}") for i, shape in enumerate(inputs)
            ],
        )
        return _to_tflite(tf, module, [function.get_concrete_function()], variant)


def _convert(
    tf: Any,
    weights: Mapping[str, npt.NDArray[np.float32]],
    config: MusiqConfig,
    variant: str,
    signatures: tuple[str, ...] = (STEM_SIGNATURE, ENCODER_SIGNATURE),
) -> bytes:
    module = _build_module(tf, weights, config)
    functions = [getattr(module, name).get_concrete_function() for name in signatures]
    return _to_tflite(tf, module, functions, variant)


def _to_tflite(
    tf: Any, module: Any, functions: Sequence[Any], variant: str, keep_float: Sequence[str] = KEEP_FLOAT
) -> bytes:
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(list(functions), module)
        # Builtin ops only: LiteRT ships no Flex kernels, so a Flex op would only fail later, at load time.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        with capture_native_stderr():  # the MLIR converter logs natively, whatever the Python log level
            flatbuffer = bytes(converter.convert())
    except Exception as exc:  # the converter raises a zoo of types, often with pages of MLIR dump
        raise ConversionError(f"TFLite conversion ({variant}) failed: {_first_line(exc)}") from None
    if variant == "dynamic-int8":
        flatbuffer = quantize_dynamic(flatbuffer, keep_float)
    return flatbuffer


def describe_quantization(variant: str) -> str:
    """How ``variant`` is quantized, in words (recorded in the model's JSON)."""
    if variant == "dynamic-int8":
        return (
            "ai-edge-quantizer dynamic range: int8 weights (symmetric, per channel), activations per row at "
            f"run time; kept in float32: layers matching {', '.join(KEEP_FLOAT) or 'none'}"
        )
    return "float16 weights" if variant == "fp16" else "none"


def quantize_dynamic(flatbuffer: bytes, keep_float: Sequence[str] = KEEP_FLOAT) -> bytes:
    """Dynamic-range int8 of an fp32 ``.tflite``: int8 weights (symmetric, per output channel) for the
    fully-connected and convolution layers, activations quantized per row at run time, except the layers
    whose names match a regular expression in ``keep_float`` (searched in the op's output tensor name,
    which carries the layer name, e.g. ``block3/out/MatMul``)."""
    try:
        from ai_edge_quantizer import quantizer
    except ImportError:
        raise ConversionError(_QUANTIZER_MISSING) from None
    recipe: list[dict[str, Any]] = [
        {
            "regex": ".*",
            "operation": "*",
            "algorithm_key": "min_max_uniform_quantize",
            "op_config": {
                "weight_tensor_config": {
                    "num_bits": 8,
                    "symmetric": True,
                    "granularity": "CHANNELWISE",
                    "dtype": "INT",
                },
                "compute_precision": "INTEGER",
                "explicit_dequantize": False,
                "skip_checks": False,
                "min_weight_elements": 0,
            },
        }
    ]
    # Later entries win where several match an op.
    recipe += [{"regex": rx, "operation": "*", "algorithm_key": "no_quantize"} for rx in keep_float]
    try:
        # The quantizer prints its progress (stdout, and tqdm bars on stderr).
        sink = io.StringIO()
        with capture_native_stderr(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            model = quantizer.Quantizer(bytearray(flatbuffer))
            model.load_quantization_recipe(recipe)
            return bytes(model.quantize().quantized_model)
    except Exception as exc:  # the quantizer's errors are many and undocumented
        raise ConversionError(f"dynamic-int8 quantization failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------- verification


def model_ops(flatbuffer: bytes) -> list[str]:
    """The distinct op names in a ``.tflite`` flatbuffer (custom ops by their custom code)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAs(flatbuffer, 0)
    ops: set[str] = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Files from before schema 3a only fill DeprecatedBuiltinCode; newer ones fill both, but the
        # deprecated field stops at 127 (a placeholder) for op codes above it.
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(bytes(code.CustomCode() or b"").decode("utf-8", "replace") or "CUSTOM")
        else:
            ops.add(names.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(ops)


def _check_builtin_only(flatbuffer: bytes) -> None:
    from ai_edge_litert import schema_py_generated as schema

    builtin = set(vars(schema.BuiltinOperator)) - {"CUSTOM"}
    foreign = [op for op in model_ops(flatbuffer) if op not in builtin]
    if foreign:
        raise ConversionError(
            f"converted model needs non-builtin ops ({', '.join(foreign)}): LiteRT cannot run it"
        )


def _smoke_test(flatbuffer: bytes, config: MusiqConfig) -> None:
    """Load and run both signatures in the LiteRT runtime that will score with the model.

    The converter can emit op versions newer than the runtime knows; that surfaces here, at conversion,
    instead of at the first photo.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    tokens = np.zeros((2, TOKEN_DIM), dtype=np.float32)
    tokens[:, -1] = 1.0
    try:
        # The builtin kernels resolve every op the file names (XNNPACK would only take a subset).
        interpreter = Interpreter(
            model_content=flatbuffer,
            num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        embeddings = interpreter.get_signature_runner(STEM_SIGNATURE)(tokens=tokens)["embeddings"]
        encoder = interpreter.get_signature_runner(ENCODER_SIGNATURE)
        output = encoder(embeddings=embeddings, mask=np.ones(2, np.float32))["scores"]
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConversionError(
            f"the LiteRT runtime cannot run the converted model: {_first_line(exc)}"
        ) from None
    if embeddings.shape != (2, config.hidden_size):
        raise ConversionError(f"the converted stem gives a bad output {embeddings.shape} on a probe input")
    if output.shape != (1, config.num_classes) or not np.all(np.isfinite(output)):
        raise ConversionError(f"the converted model gives a bad output {output.shape} on a probe input")


# -------------------------------------------------------------------------------------------------- io


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory: a crash never leaves a half-written model behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; the scoring service often runs as another user than the one
        # who converted, and must be able to read the model.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
