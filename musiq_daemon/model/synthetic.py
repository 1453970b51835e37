"""Synthetic checkpoints in the exact official layout, for tests and benchmarks.

Real MUSIQ weights are ~155 MB downloads; the test-suite and the benchmarks generate checkpoints with
the same keys, shapes and dtypes instead, so the loader, converter and runtime are exercised through
the very code path a real checkpoint takes. Scores from these weights are meaningless by construction:
nothing in the CLI uses this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musiq_daemon.model.config import CHECKPOINT_PREFIX, MusiqConfig, expected_shapes


def synthetic_params(config: MusiqConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters with realistic magnitudes (keys without the ``opt/target/`` prefix).

    Magnitudes follow the official initialisers closely enough that activations stay in a realistic
    range through all layers (so numerical comparisons are meaningful, not dominated by overflow or by
    everything collapsing to zero).
    """
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for key, shape in expected_shapes(config).items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias" or leaf in ("pos_embedding", "scale_embedding", "cls"):
            value = 0.02 * rng.standard_normal(shape)
        else:  # kernels: Glorot-like scale on fan-in
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            if key.endswith("out/kernel"):
                fan_in = shape[0] * shape[1]
            elif "MultiHeadDotProductAttention" in key:
                fan_in = shape[0]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
            if key.startswith("conv_root"):
                value = value + 0.05  # a non-zero mean, so weight standardisation matters in tests
        params[key] = value.astype(np.float32)
    if config.num_classes == 1:
        # Quality heads output a MOS around 0..100: make the synthetic head land in that range too.
        params["head/kernel"] *= 10.0
        params["head/bias"][:] = 50.0
    return params


def write_synthetic_checkpoint(path: Path, config: MusiqConfig, seed: int = 0) -> Path:
    """Write an ``.npz`` with the official key layout, plus optimizer state the loader must ignore."""
    arrays = {CHECKPOINT_PREFIX + k: v for k, v in synthetic_params(config, seed).items()}
    # The official files also carry the optimizer state and step; loaders must ignore it.
    arrays["opt/state/step"] = np.asarray(1000, dtype=np.int64)
    arrays["opt/state/param_states/head/kernel/grad_ema"] = np.zeros((1,), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path
