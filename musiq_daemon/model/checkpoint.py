"""Loading and validating the official MUSIQ ``*_ckpt.npz`` checkpoints.

An official checkpoint is an npz archive whose model parameters live under ``opt/target/<module path>``;
everything else in it (optimizer state, step counter) is ignored. The architecture is not stored in the
file, so :func:`load_checkpoint` infers a :class:`MusiqConfig` from the parameter shapes and then checks
every key and shape against :func:`expected_shapes` - the same layout description the synthetic test
checkpoints are written from, so tests exercise exactly the path a real download takes.

Every way a file can be wrong ends in one :class:`CheckpointError` whose message is a single line naming
the file, what is wrong with it and what to do about it; a bad file never produces a traceback.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from musiq_daemon.errors import CheckpointError
from musiq_daemon.model.config import CHECKPOINT_PREFIX, MusiqConfig, expected_shapes

__all__ = [
    "STD_CONV_EPSILON",
    "STD_CONV_KERNELS",
    "Checkpoint",
    "load_checkpoint",
    "standardize_kernel",
]

#: Every convolution of the official stem is a weight-standardised ``StdConv`` (the ResNet root conv and
#: all four convs of the bottleneck unit, projection included); the patch embedding is a plain Dense.
STD_CONV_KERNELS: tuple[str, ...] = (
    "conv_root/kernel",
    "block1/unit1/conv_proj/kernel",
    "block1/unit1/conv1/kernel",
    "block1/unit1/conv2/kernel",
    "block1/unit1/conv3/kernel",
)

#: Added to the standard deviation (not to the variance) when a StdConv standardises its kernel.
STD_CONV_EPSILON = 1e-5

_READ_CHUNK = 1 << 20
_BLOCK_KEY = re.compile(r"^Transformer/encoderblock_(\d+)/")
# How many offending keys a message lists before it summarises the rest as a count.
_KEYS_SHOWN = 3

# Exceptions that numpy and zipfile raise for a damaged archive. Members are decompressed and parsed
# lazily, so a truncated or bit-flipped member only fails when it is read - which is why every member
# we use is read while these are being caught.
_CORRUPT_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    OSError,
    KeyError,
    struct.error,
    NotImplementedError,
    OverflowError,
    MemoryError,
)

# Leading bytes of files people plausibly mistake for a checkpoint, to say what was given instead.
_KNOWN_NON_NPZ: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"\x1f\x8b", "a gzip/tar archive, perhaps the TF-Hub SavedModel download"),
    (b"\x80", "a Python pickle"),
    (b"<", "an HTML/XML document, perhaps an error page saved instead of the download"),
    (b"{", "a JSON document"),
)
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"

_DOWNLOAD_AGAIN = "download the official checkpoint again"


@dataclass(frozen=True)
class Checkpoint:
    """The validated parameters of one checkpoint file.

    ``params`` maps keys without the ``opt/target/`` prefix to read-only float32 arrays: they are shared
    by everything built from this checkpoint, and ``sha256`` describes exactly these values.
    """

    params: dict[str, npt.NDArray[np.float32]]
    config: MusiqConfig
    sha256: str
    path: Path


def standardize_kernel(kernel: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Weight-standardise an HWIO conv kernel the way the official ``StdConv`` does at every call.

    Per output channel: ``(w - mean) / (std + 1e-5)`` over (H, W, Cin), population std. The statistics
    are computed in float64 so that folding this into exported weights loses nothing beyond the final
    rounding to float32.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"expected an HWIO conv kernel (4 dimensions), got shape {w.shape}")
    centered: npt.NDArray[np.float64] = w - w.mean(axis=(0, 1, 2), keepdims=True)
    std: npt.NDArray[np.float64] = centered.std(axis=(0, 1, 2), keepdims=True)
    standardized: npt.NDArray[np.float64] = centered / (std + STD_CONV_EPSILON)
    return standardized.astype(np.float32)


def load_checkpoint(path: Path, *, num_classes: int | None = None, model_id: str | None = None) -> Checkpoint:
    """Read, hash and validate an official MUSIQ checkpoint.

    ``num_classes``, when given, is the head size the caller's model needs (1 for the MOS models, 10 for
    AVA); ``model_id`` only names that model in the error message. Raises :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        return _load(path, num_classes, model_id)
    except CheckpointError as exc:
        # Keys and exception texts come from the file: keep even a hostile one to a single line.
        raise CheckpointError(_one_line_text(exc.message)) from None


def _load(path: Path, num_classes: int | None, model_id: str | None) -> Checkpoint:
    name = _one_line_text(str(path))
    data, sha256 = _read_file(path, name)
    raw = _read_params(data, name)
    del data  # the archive bytes are no longer needed; do not hold two copies of the weights
    params = _as_float32(raw, name)
    config = _infer_config(params, name)
    _validate(params, config, name)
    if num_classes is not None and config.num_classes != num_classes:
        model = f"model {model_id}" if model_id else "the model"
        raise CheckpointError(
            f"checkpoint {name} has a {_classes(config.num_classes)} head but {model} expects "
            f"{num_classes}: use the checkpoint that belongs to {model} (AVA has a 10-class head, "
            "KonIQ/SPAQ/PaQ-2-PiQ a 1-class head)"
        )
    for value in params.values():
        value.flags.writeable = False
    return Checkpoint(params=params, config=config, sha256=sha256, path=path)


def _one_line_text(text: str) -> str:
    # Escaped rather than dropped, so a file name with a line break in it can still be recognised.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _classes(n: int) -> str:
    return f"{n}-class"


def _read_file(path: Path, name: str) -> tuple[bytes, str]:
    """The whole file and its sha256, from one read, so the hash describes exactly the bytes parsed."""
    if path.is_dir():
        hint = (
            " (it looks like a TF-Hub SavedModel; MUSIQ needs the *_ckpt.npz release)"
            if (path / "saved_model.pb").exists()
            else ""
        )
        raise CheckpointError(f"checkpoint {name} is a directory{hint}: pass the path of a *_ckpt.npz file")
    if path.exists() and not path.is_file():
        # A pipe or device could block forever or never end; a checkpoint is always a regular file.
        raise CheckpointError(f"checkpoint {name} is not a regular file: pass the path of a *_ckpt.npz file")
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                digest.update(chunk)
                chunks.append(chunk)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {name} does not exist: check the path, or {_DOWNLOAD_AGAIN}"
        ) from None
    except PermissionError:
        raise CheckpointError(
            f"checkpoint {name} is not readable (permission denied): fix its permissions"
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {name} could not be read ({_one_line(exc)}): check the file and the disk"
        ) from None
    data = b"".join(chunks)
    if not data:
        raise CheckpointError(f"checkpoint {name} is empty: {_DOWNLOAD_AGAIN}")
    return data, digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _read_params(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Every ``opt/target/`` member as an array (prefix stripped), read eagerly to surface corruption."""
    if not data.startswith(_ZIP_MAGIC):
        if data.startswith(_NPY_MAGIC):
            what = "a single .npy array"
        else:
            what = next((desc for magic, desc in _KNOWN_NON_NPZ if data.startswith(magic)), "unknown data")
        raise CheckpointError(
            f"checkpoint {name} is not an npz archive (it is {what}): pass an official MUSIQ *_ckpt.npz file"
        )
    params: dict[str, np.ndarray] = {}
    try:
        # allow_pickle=False: a checkpoint is data, and loading must never execute code from the file.
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            # The optimizer state is never read: it is unused, and reading it could only add failures.
            for member in npz.files:
                if member.startswith(CHECKPOINT_PREFIX):
                    value = npz[member]
                    if not isinstance(value, np.ndarray):
                        raise CheckpointError(
                            f"checkpoint {name} member {member} is not an array: {_DOWNLOAD_AGAIN}"
                        )
                    params[member[len(CHECKPOINT_PREFIX) :]] = value
    except CheckpointError:
        raise
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise CheckpointError(
            f"checkpoint {name} is truncated or corrupt ({_one_line(exc)}): {_DOWNLOAD_AGAIN}"
        ) from None
    if not params:
        raise CheckpointError(
            f"checkpoint {name} is not a MUSIQ checkpoint (no {CHECKPOINT_PREFIX}* parameters): "
            "pass an official MUSIQ *_ckpt.npz file"
        )
    return params


def _as_float32(raw: Mapping[str, np.ndarray], name: str) -> dict[str, npt.NDArray[np.float32]]:
    params: dict[str, npt.NDArray[np.float32]] = {}
    for key, value in raw.items():
        if value.dtype.kind != "f":
            raise CheckpointError(
                f"checkpoint {name} has {CHECKPOINT_PREFIX}{key} of dtype {value.dtype}, expected float: "
                f"{_DOWNLOAD_AGAIN}"
            )
        # Plain C-ordered float32 is what every consumer wants. A float64 value too large for float32
        # becomes inf here and is reported by the finiteness check, so the cast need not warn.
        with np.errstate(over="ignore"):
            params[key] = np.ascontiguousarray(value, dtype=np.float32)
    return params


def _infer_config(params: Mapping[str, npt.NDArray[np.float32]], name: str) -> MusiqConfig:
    """The architecture implied by the shapes; detailed consistency is left to :func:`_validate`."""

    def dims(key: str, ndim: int) -> tuple[int, ...]:
        value = params.get(key)
        if value is None:
            raise CheckpointError(
                f"checkpoint {name} lacks {CHECKPOINT_PREFIX}{key}: not a MUSIQ checkpoint "
                "(pass an official MUSIQ *_ckpt.npz file)"
            )
        if value.ndim != ndim:
            raise CheckpointError(
                f"checkpoint {name} has {CHECKPOINT_PREFIX}{key} with shape {value.shape}, expected "
                f"{ndim} dimensions: not the MUSIQ architecture"
            )
        return tuple(int(d) for d in value.shape)

    blocks = sorted({int(m.group(1)) for key in params if (m := _BLOCK_KEY.match(key))})
    if not blocks:
        raise CheckpointError(
            f"checkpoint {name} has no Transformer/encoderblock_* parameters: not a MUSIQ checkpoint "
            "(pass an official MUSIQ *_ckpt.npz file)"
        )
    if blocks != list(range(len(blocks))):
        raise CheckpointError(
            f"checkpoint {name} has encoder blocks {_summarise([str(b) for b in blocks])}, which are not "
            f"numbered 0..{len(blocks) - 1}: the file is damaged, {_DOWNLOAD_AGAIN}"
        )
    attention = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    _, hidden = dims("embedding/kernel", 2)
    _, num_heads, _ = dims(attention + "query/kernel", 3)
    _, mlp_dim = dims("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", 2)
    _, num_classes = dims("head/kernel", 2)
    if min(hidden, num_heads, mlp_dim, num_classes) < 1:
        raise CheckpointError(
            f"checkpoint {name} has empty parameter tensors: not the MUSIQ architecture, {_DOWNLOAD_AGAIN}"
        )
    return MusiqConfig(
        hidden_size=hidden,
        num_layers=len(blocks),
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    )


def _summarise(items: list[str]) -> str:
    shown = ", ".join(items[:_KEYS_SHOWN])
    more = len(items) - _KEYS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _validate(params: Mapping[str, npt.NDArray[np.float32]], config: MusiqConfig, name: str) -> None:
    expected = expected_shapes(config)
    missing = sorted(expected.keys() - params.keys())
    if missing:
        raise CheckpointError(
            f"checkpoint {name} lacks {len(missing)} parameter(s) ({_summarise(missing)}): "
            f"incomplete or not a MUSIQ checkpoint, {_DOWNLOAD_AGAIN}"
        )
    unexpected = sorted(params.keys() - expected.keys())
    if unexpected:
        raise CheckpointError(
            f"checkpoint {name} has {len(unexpected)} unexpected parameter(s) under {CHECKPOINT_PREFIX} "
            f"({_summarise(unexpected)}): not the MUSIQ architecture this program implements"
        )
    for key, shape in expected.items():
        if params[key].shape != shape:
            raise CheckpointError(
                f"checkpoint {name} has {CHECKPOINT_PREFIX}{key} with shape {params[key].shape}, expected "
                f"{shape} for {_describe(config)}: not the MUSIQ architecture this program implements"
            )
    for key in expected:
        if not np.isfinite(params[key]).all():
            raise CheckpointError(
                f"checkpoint {name} has non-finite values (NaN/inf) in {CHECKPOINT_PREFIX}{key}: "
                f"{_DOWNLOAD_AGAIN}"
            )


def _describe(config: MusiqConfig) -> str:
    return (
        f"hidden {config.hidden_size}, {config.num_layers} layers, {config.num_heads} heads, "
        f"MLP {config.mlp_dim}, {_classes(config.num_classes)} head"
    )
