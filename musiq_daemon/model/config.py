"""The MUSIQ architecture's hyper-parameters and the official checkpoint key layout.

The official checkpoints (``*_ckpt.npz``) store every parameter under ``opt/target/<module path>/<param>``.
:func:`expected_shapes` is the single description of that layout: the checkpoint loader validates
against it and the synthetic-checkpoint generator writes it, so both always agree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_PREFIX = "opt/target/"

#: Stem (per-patch ResNet root + one bottleneck unit) - fixed by the official model.
PATCH_SIZE = 32
STEM_CHANNELS = 64
STEM_OUT_CHANNELS = 256
#: Flattened 8x8x256 stem output feeding the patch embedding.
STEM_FEATURES = 8 * 8 * STEM_OUT_CHANNELS
HASH_GRID = 10
NUM_SCALES = 3
TOKEN_PIXELS = PATCH_SIZE * PATCH_SIZE * 3
#: A token row is [3072 pixels, spatial index, scale id, mask].
TOKEN_DIM = TOKEN_PIXELS + 3

#: The two signatures of a converted model: ``stem`` (token rows to embeddings, per token) and
#: ``encoder`` (embeddings and mask to the head output). The runtime refuses files without them.
STEM_SIGNATURE = "stem"
ENCODER_SIGNATURE = "encoder"
#: Recorded in a converted model's JSON; bumped whenever the graph's signatures change.
GRAPH_FORMAT = 2


@dataclass(frozen=True)
class MusiqConfig:
    """Transformer size and head. The defaults are the published MUSIQ (27.13 M parameters)."""

    hidden_size: int = 384
    num_layers: int = 14
    num_heads: int = 6
    mlp_dim: int = 1152
    num_classes: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def tiny(cls, num_classes: int = 1) -> MusiqConfig:
        """A small configuration with the official key layout, for fast tests."""
        return cls(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, num_classes=num_classes)


def expected_shapes(config: MusiqConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter key (without the ``opt/target/`` prefix) and its shape, for ``config``."""
    c, h = STEM_CHANNELS, config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "conv_root/kernel": (7, 7, 3, c),
        "gn_root/scale": (1, 1, 1, c),
        "gn_root/bias": (1, 1, 1, c),
        "block1/unit1/conv_proj/kernel": (1, 1, c, STEM_OUT_CHANNELS),
        "block1/unit1/gn_proj/scale": (1, 1, 1, STEM_OUT_CHANNELS),
        "block1/unit1/gn_proj/bias": (1, 1, 1, STEM_OUT_CHANNELS),
        "block1/unit1/conv1/kernel": (1, 1, c, c),
        "block1/unit1/gn1/scale": (1, 1, 1, c),
        "block1/unit1/gn1/bias": (1, 1, 1, c),
        "block1/unit1/conv2/kernel": (3, 3, c, c),
        "block1/unit1/gn2/scale": (1, 1, 1, c),
        "block1/unit1/gn2/bias": (1, 1, 1, c),
        "block1/unit1/conv3/kernel": (1, 1, c, STEM_OUT_CHANNELS),
        "block1/unit1/gn3/scale": (1, 1, 1, STEM_OUT_CHANNELS),
        "block1/unit1/gn3/bias": (1, 1, 1, STEM_OUT_CHANNELS),
        "embedding/kernel": (STEM_FEATURES, h),
        "embedding/bias": (h,),
        "Transformer/posembed_input/pos_embedding": (1, HASH_GRID * HASH_GRID, h),
        "Transformer/scaleembed_input/scale_embedding": (1, NUM_SCALES, h),
        "Transformer/cls": (1, 1, h),
        "Transformer/encoder_norm/scale": (h,),
        "Transformer/encoder_norm/bias": (h,),
        "head/kernel": (h, config.num_classes),
        "head/bias": (config.num_classes,),
    }
    nh, hd = config.num_heads, config.head_dim
    for i in range(config.num_layers):
        p = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            shapes[f"{p}{ln}/scale"] = (h,)
            shapes[f"{p}{ln}/bias"] = (h,)
        att = f"{p}MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            shapes[f"{att}{name}/kernel"] = (h, nh, hd)
            shapes[f"{att}{name}/bias"] = (nh, hd)
        shapes[f"{att}out/kernel"] = (nh, hd, h)
        shapes[f"{att}out/bias"] = (h,)
        mlp = f"{p}MlpBlock_3/"
        shapes[f"{mlp}Dense_0/kernel"] = (h, config.mlp_dim)
        shapes[f"{mlp}Dense_0/bias"] = (config.mlp_dim,)
        shapes[f"{mlp}Dense_1/kernel"] = (config.mlp_dim, h)
        shapes[f"{mlp}Dense_1/bias"] = (h,)
    return shapes


def parameter_count(config: MusiqConfig) -> int:
    total = 0
    for shape in expected_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
