"""Running a converted MUSIQ ``.tflite`` with LiteRT: CPU (XNNPACK) or GPU (LiteRT CompiledModel).

Only ``ai_edge_litert`` is imported here - never TensorFlow.

Device choice (``auto | cpu | gpu``): the GPU path is LiteRT's WebGPU accelerator over Vulkan, which
exists only where ``libvulkan.so.1`` and a hardware Vulkan driver are present. ``auto`` probes once per
process, checks the GPU's output against the CPU's on a probe input before trusting it, and falls back
to the CPU with a log line saying why. ``gpu`` fails with a clear message when there is none.

A model has two signatures (see ``musiq_daemon.model.convert``): ``stem`` turns token rows into
embeddings, one fixed-size chunk of :data:`STEM_CHUNK` rows at a time, so the stem's activations (the
largest tensors of the model) take the same few MB for every photo; ``encoder`` runs the transformer on
all of a photo's embeddings. Rows the preprocessing marked as padding (mask 0) are dropped before either
runs: the model ignores them exactly, so they would only cost time. What padding remains (the last stem
chunk; encoder lengths rounded up to a multiple of :data:`BUCKET`, so that photos of similar size reuse
the allocated tensors) repeats a real row, with mask 0 for the encoder: a repeated row leaves every
per-tensor range unchanged, so even dynamically quantized layers give exactly the unpadded result.
"""

from __future__ import annotations

import ctypes.util
import gc
import logging
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from musiq_daemon.errors import DeviceError, ModelFileError, UsageError
from musiq_daemon.model.config import ENCODER_SIGNATURE, STEM_SIGNATURE, TOKEN_DIM
from musiq_daemon.native_log import capture_native_stderr

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")
#: Encoder sequence lengths are rounded up to a multiple of this (padding repeats a row, with mask 0).
BUCKET = 32
#: Token rows per ``stem`` invocation.
STEM_CHUNK = 64
#: Relative agreement the GPU must reach against the CPU on the probe input before ``auto`` uses it.
GPU_AGREEMENT = 0.05


def bucket_length(n: int, step: int = BUCKET) -> int:
    return max(step, -(-n // step) * step)


def pad_rows(rows: npt.NDArray[np.float32], length: int) -> npt.NDArray[np.float32]:
    """``rows`` followed by copies of its last row up to ``length`` rows (``rows`` itself if long enough).

    A repeated row changes no minimum, maximum or per-row value anywhere in the model, so neither the
    exact float computation nor a dynamically quantized one sees the padding (the encoder's mask hides
    the copies from attention).
    """
    n = rows.shape[0]
    if n >= length:
        return rows
    out = np.empty((length, *rows.shape[1:]), dtype=np.float32)
    out[:n] = rows
    out[n:] = rows[n - 1]
    return out


def model_rows(tokens: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The rows the model computes: the real tokens (mask 1); padding rows from preprocessing dropped."""
    keep = tokens[:, -1] > 0
    return tokens if bool(keep.all()) else tokens[keep]


class Backend(Protocol):
    device: str
    hidden: int

    def embed(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run ``stem`` on (STEM_CHUNK, 3075) token rows; return their (STEM_CHUNK, hidden) embeddings."""
        ...

    def encode(
        self, embeddings: npt.NDArray[np.float32], mask: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Run ``encoder`` on (L, hidden) embeddings and their (L,) mask; return the head output."""
        ...


# Native messages on fd 2 are captured by :mod:`musiq_daemon.native_log` (see STDERR_LOCK there).
_quiet_stderr = capture_native_stderr


class _Natives:
    """One backend's LiteRT objects (model or interpreter, and the GPU's tensor buffers).

    A backend keeps them here and nowhere else, so that :func:`_release` can drop them while fd 2 is
    captured: LiteRT prints ``DestroyAccelerator`` lines when a model's environment goes, and a finalizer
    runs before the backend's own attributes are cleared.
    """

    __slots__ = ("encoder_inputs", "encoder_outputs", "inputs", "model", "outputs")

    def __init__(self, model: Any) -> None:
        self.model: Any = model
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.encoder_inputs: list[Any] = []
        self.encoder_outputs: list[Any] = []


def _release(natives: _Natives) -> None:
    """Drop a backend's native objects with fd 2 captured. Runs from ``close()``, when the garbage
    collector takes the backend, or at interpreter exit (``weakref.finalize``), whichever comes first."""
    with _quiet_stderr():
        natives.model = None
        natives.inputs = []
        natives.outputs = []
        natives.encoder_inputs = []
        natives.encoder_outputs = []


def _old_format(model_path: Path) -> ModelFileError:
    return ModelFileError(
        f"{model_path} was converted by an older musiqd (it lacks the '{STEM_SIGNATURE}' and "
        f"'{ENCODER_SIGNATURE}' signatures): re-create it with 'musiqd models convert'"
    )


class CpuBackend:
    """LiteRT Interpreter with XNNPACK (on by default; it handles changing sequence lengths)."""

    device = "cpu"

    def __init__(self, model_path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            with _quiet_stderr():
                interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"cannot load model {model_path}: {exc}; re-create it with 'musiqd models convert'"
            ) from None
        self._natives = _Natives(interpreter)
        del interpreter
        self._finalizer = weakref.finalize(self, _release, self._natives)
        signatures = self._natives.model.get_signature_list()
        stem = signatures.get(STEM_SIGNATURE, {})
        encoder = signatures.get(ENCODER_SIGNATURE, {})
        if stem.get("inputs") != ["tokens"] or sorted(encoder.get("inputs", [])) != ["embeddings", "mask"]:
            self.close()
            raise _old_format(model_path)
        self._stem = self._natives.model.get_signature_runner(STEM_SIGNATURE)
        self._encoder = self._natives.model.get_signature_runner(ENCODER_SIGNATURE)
        tokens = self._stem.get_input_details()["tokens"]
        embeddings = self._encoder.get_input_details()["embeddings"]
        if int(tokens["shape_signature"][-1]) != TOKEN_DIM:
            self.close()
            raise ModelFileError(f"{model_path} is not a musiqd MUSIQ model (unexpected inputs)")
        self.hidden = int(embeddings["shape_signature"][-1])
        self._allocated = False

    def embed(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._allocated:
            out = self._stem(tokens=rows)["embeddings"]
        else:  # XNNPACK logs "INFO: Created ... delegate" at the first allocation, and only then
            with _quiet_stderr():
                out = self._stem(tokens=rows)["embeddings"]
            self._allocated = True
        return np.asarray(out, dtype=np.float32)

    def encode(
        self, embeddings: npt.NDArray[np.float32], mask: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        # A signature runner resizes and re-allocates only when the length differs from the last call.
        out = self._encoder(embeddings=embeddings, mask=mask)["scores"]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        """Free the interpreter now (quietly); the backend cannot run afterwards."""
        self._stem = self._encoder = None
        self._finalizer()


class GpuBackend:
    """LiteRT CompiledModel on the GPU accelerator (WebGPU over Vulkan), with static shapes per bucket."""

    device = "gpu"

    def __init__(self, model_path: Path, threads: int, num_outputs: int) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        options = Options(
            hardware_accelerators=HardwareAccelerator.GPU | HardwareAccelerator.CPU,
            cpu_options=CpuOptions(num_threads=threads),
        )
        with _quiet_stderr():
            self._natives = _Natives(CompiledModel.from_file(str(model_path), options=options))
        self._finalizer = weakref.finalize(self, _release, self._natives)
        model = self._natives.model
        self._stem = model.get_signature_index(STEM_SIGNATURE)
        self._encoder = model.get_signature_index(ENCODER_SIGNATURE)
        if self._stem < 0 or self._encoder < 0:
            self.close()
            raise _old_format(model_path)
        encoder_inputs = list(model.get_signature_list()[ENCODER_SIGNATURE]["inputs"])
        self._embeddings_input = encoder_inputs.index("embeddings")
        self._mask_input = encoder_inputs.index("mask")
        self.hidden = int(model.get_input_tensor_details(ENCODER_SIGNATURE)["embeddings"]["shape"][-1])
        self._num_outputs = num_outputs
        self._stem_rows = -1
        self._length = -1

    def embed(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        natives = self._natives
        if rows.shape[0] != self._stem_rows:
            with _quiet_stderr():
                natives.model.resize_input_tensor(0, list(rows.shape), self._stem)
                natives.inputs = natives.model.create_input_buffers(self._stem)
                natives.outputs = natives.model.create_output_buffers(self._stem)
            self._stem_rows = rows.shape[0]
        natives.inputs[0].write(rows)
        natives.model.run_by_index(self._stem, natives.inputs, natives.outputs)
        out = natives.outputs[0].read(rows.shape[0] * self.hidden, np.float32)
        return np.asarray(out, dtype=np.float32).reshape(rows.shape[0], self.hidden)

    def encode(
        self, embeddings: npt.NDArray[np.float32], mask: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        natives = self._natives
        length = embeddings.shape[0]
        if length != self._length:
            with _quiet_stderr():  # the buffers they replace are freed in here too
                model = natives.model
                model.resize_input_tensor(self._embeddings_input, [length, self.hidden], self._encoder)
                model.resize_input_tensor(self._mask_input, [length], self._encoder)
                natives.encoder_inputs = model.create_input_buffers(self._encoder)
                natives.encoder_outputs = model.create_output_buffers(self._encoder)
            self._length = length
        natives.encoder_inputs[self._embeddings_input].write(embeddings)
        natives.encoder_inputs[self._mask_input].write(mask)
        natives.model.run_by_index(self._encoder, natives.encoder_inputs, natives.encoder_outputs)
        out = natives.encoder_outputs[0].read(self._num_outputs, np.float32)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def close(self) -> None:
        """Free the compiled model, its buffers and its LiteRT environment now (quietly)."""
        self._finalizer()


def vulkan_available() -> bool:
    """Whether a Vulkan loader is installed at all (no loader: no GPU path, skip the probe)."""
    return ctypes.util.find_library("vulkan") is not None


def _probe_batch() -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(7)
    n = 64
    tokens = np.zeros((n, TOKEN_DIM), dtype=np.float32)
    tokens[:, :-3] = rng.uniform(-1, 1, size=(n, TOKEN_DIM - 3))
    tokens[:, -3] = rng.integers(0, 100, size=n)
    tokens[:, -2] = rng.integers(0, 3, size=n)
    tokens[:, -1] = 1.0
    return tokens


def _try_gpu(model_path: Path, threads: int, num_outputs: int) -> tuple[GpuBackend | None, str]:
    """The GPU backend if it loads and agrees with the CPU on a probe input, else ``(None, why not)``.

    Creation, probe and the destruction of a GPU that failed all happen in one captured section: LiteRT
    prints ``DestroyAccelerator`` lines when the environment of a model that could not be created goes,
    and until the ``except`` clause ends that environment is still held by the exception's traceback.
    """
    gpu: GpuBackend | None = None
    reason = ""
    error = ""
    with _quiet_stderr() as native:
        try:
            gpu = GpuBackend(model_path, threads, num_outputs)
            probe = _probe_batch()
            got = Engine(model_path, gpu, threads).run(probe)
            cpu = CpuBackend(model_path, threads)
            want = Engine(model_path, cpu, threads).run(probe)
            cpu.close()
            scale = float(np.max(np.abs(want))) or 1.0
            err = float(np.max(np.abs(got - want))) / scale
            if not np.all(np.isfinite(got)) or err > GPU_AGREEMENT:
                reason = f"the GPU's output disagrees with the CPU's (relative error {err:.3g})"
        except Exception as exc:  # a GPU that fails in any way is not used; the CPU always works
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = "no usable GPU"
        if reason and gpu is not None:
            gpu.close()
            gpu = None
        gc.collect()  # whatever of a failed GPU is left in reference cycles goes here, not at exit
    if error:
        reason = f"no usable GPU ({_native_error(native.text) or error})"
    return gpu, reason


#: A LiteRT / absl error line: ``ERROR: [file.cc:123] message`` or ``E0000 00:00:... file.cc:123] message``.
_NATIVE_ERROR = re.compile(r"^(?:ERROR: \[[^\]]*\]|E\d{4} [^\]]*\])\s*(\S.*)$", re.MULTILINE)


def _native_error(text: str) -> str:
    """The first error LiteRT printed, without its source location ("" when it printed none)."""
    match = _NATIVE_ERROR.search(text)
    return match.group(1).strip() if match else ""


@dataclass
class Engine:
    """A loaded model ready to score token sequences, on the device that was chosen."""

    model_path: Path
    backend: Backend
    threads: int
    fallback_reason: str | None = None

    @property
    def device(self) -> str:
        return self.backend.device

    def run(self, tokens: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Score one (N, 3075) token sequence; returns the model's head output."""
        if tokens.ndim != 2 or tokens.shape[1] != TOKEN_DIM or tokens.shape[0] == 0:
            raise ValueError(f"expected tokens of shape (N, {TOKEN_DIM}), got {tokens.shape}")
        rows = model_rows(np.asarray(tokens, dtype=np.float32))
        n = rows.shape[0]
        if n == 0:
            raise ValueError("every token is padding (mask 0): nothing to score")
        embeddings = np.empty((bucket_length(n), self.backend.hidden), dtype=np.float32)
        for start in range(0, n, STEM_CHUNK):
            chunk = rows[start : start + STEM_CHUNK]
            embeddings[start : start + len(chunk)] = self.backend.embed(pad_rows(chunk, STEM_CHUNK))[
                : len(chunk)
            ]
        embeddings[n:] = embeddings[n - 1]
        mask = np.zeros(embeddings.shape[0], dtype=np.float32)
        mask[:n] = 1.0
        return self.backend.encode(embeddings, mask)


def open_engine(model_path: Path, *, num_outputs: int, device: str = "auto", threads: int = 2) -> Engine:
    """Load ``model_path`` on ``device``; ``auto`` prefers a working, verified GPU and falls back to CPU."""
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    if threads < 1:
        raise UsageError(f"threads must be at least 1 (got {threads})")
    if not model_path.is_file():
        raise ModelFileError(f"model file {model_path} does not exist")
    if device == "cpu":
        engine = Engine(model_path, CpuBackend(model_path, threads), threads)
        log.info("inference on CPU (XNNPACK, %d threads): %s", threads, model_path.name)
        return engine

    if not vulkan_available():
        reason = "no Vulkan loader (libvulkan.so.1) is installed"
    else:
        gpu, reason = _try_gpu(model_path, threads, num_outputs)
        if gpu is not None:
            log.info("inference on GPU (LiteRT WebGPU/Vulkan): %s", model_path.name)
            return Engine(model_path, gpu, threads)
    if device == "gpu":
        raise DeviceError(
            f"--device gpu: {reason}; a GPU needs libvulkan1 and a hardware Vulkan driver "
            "(Intel, AMD, NVIDIA; /dev/dri in containers). Use --device auto or cpu."
        )
    log.info("inference on CPU (XNNPACK, %d threads): %s; %s", threads, model_path.name, reason)
    return Engine(model_path, CpuBackend(model_path, threads), threads, fallback_reason=reason)
