"""Running a converted MUSIQ ``.tflite`` with LiteRT: CPU (XNNPACK) or GPU (LiteRT CompiledModel).

Only ``ai_edge_litert`` is imported here - never TensorFlow.

Device choice (``auto | cpu | gpu``): the GPU path is LiteRT's WebGPU accelerator over Vulkan, which
exists only where ``libvulkan.so.1`` and a hardware Vulkan driver are present. ``auto`` probes once per
process, checks the GPU's output against the CPU's on a probe input before trusting it, and falls back
to the CPU with a log line saying why. ``gpu`` fails with a clear message when there is none.

Sequence lengths are bucketed (rounded up to a multiple of :data:`BUCKET`) and padded with mask-0 rows,
which the model ignores exactly; consecutive photos of similar size then reuse the allocated tensors
instead of paying a resize + re-allocation for each photo.
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
from musiq_daemon.model.config import TOKEN_DIM
from musiq_daemon.native_log import capture_native_stderr

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")
#: Sequence lengths are rounded up to a multiple of this (padding rows carry mask 0).
BUCKET = 32
#: Relative agreement the GPU must reach against the CPU on the probe input before ``auto`` uses it.
GPU_AGREEMENT = 0.05


def bucket_length(n: int, step: int = BUCKET) -> int:
    return max(step, -(-n // step) * step)


def pad_to(tokens: npt.NDArray[np.float32], length: int) -> npt.NDArray[np.float32]:
    """Append all-zero rows (mask 0) so the sequence has ``length`` rows; returns shape (1, length, 3075)."""
    n = tokens.shape[0]
    out = np.zeros((1, length, TOKEN_DIM), dtype=np.float32)
    out[0, :n] = tokens
    return out


class Backend(Protocol):
    device: str

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run one padded (1, L, 3075) sequence; return the head output (num_classes,)."""
        ...


# Native messages on fd 2 are captured by :mod:`musiq_daemon.native_log` (see STDERR_LOCK there).
_quiet_stderr = capture_native_stderr


class _Natives:
    """One backend's LiteRT objects (model or interpreter, and the GPU's tensor buffers).

    A backend keeps them here and nowhere else, so that :func:`_release` can drop them while fd 2 is
    captured: LiteRT prints ``DestroyAccelerator`` lines when a model's environment goes, and a finalizer
    runs before the backend's own attributes are cleared.
    """

    __slots__ = ("inputs", "model", "outputs")

    def __init__(self, model: Any) -> None:
        self.model: Any = model
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []


def _release(natives: _Natives) -> None:
    """Drop a backend's native objects with fd 2 captured. Runs from ``close()``, when the garbage
    collector takes the backend, or at interpreter exit (``weakref.finalize``), whichever comes first."""
    with _quiet_stderr():
        natives.model = None
        natives.inputs = []
        natives.outputs = []


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
        inputs = self._natives.model.get_input_details()
        outputs = self._natives.model.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or int(inputs[0]["shape"][-1]) != TOKEN_DIM:
            self.close()
            raise ModelFileError(f"{model_path} is not a musiqd MUSIQ model (unexpected inputs/outputs)")
        self._input = int(inputs[0]["index"])
        self._output = int(outputs[0]["index"])
        self._length = -1

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        interpreter = self._natives.model
        length = batch.shape[1]
        if length != self._length:
            interpreter.resize_tensor_input(self._input, [1, length, TOKEN_DIM], strict=False)
            with _quiet_stderr():  # XNNPACK logs "INFO: Created ... delegate" when it is applied
                interpreter.allocate_tensors()
            self._length = length
        interpreter.set_tensor(self._input, batch)
        interpreter.invoke()
        out: npt.NDArray[np.float32] = np.array(interpreter.get_tensor(self._output), np.float32)
        return out.reshape(-1)

    def close(self) -> None:
        """Free the interpreter now (quietly); the backend cannot run afterwards."""
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
        self._num_outputs = num_outputs
        self._length = -1

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        natives = self._natives
        length = batch.shape[1]
        if length != self._length:
            with _quiet_stderr():  # the buffers they replace are freed in here too
                natives.model.resize_input_tensor(0, [1, length, TOKEN_DIM])
                natives.inputs = natives.model.create_input_buffers(0)
                natives.outputs = natives.model.create_output_buffers(0)
            self._length = length
        natives.inputs[0].write(batch)
        natives.model.run_by_index(0, natives.inputs, natives.outputs)
        out = natives.outputs[0].read(self._num_outputs, np.float32)
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
    return tokens[None]


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
            got = gpu.run(probe)
            cpu = CpuBackend(model_path, threads)
            want = cpu.run(probe)
            cpu.close()
            scale = float(np.max(np.abs(want))) or 1.0
            err = float(np.max(np.abs(got - want))) / scale
            if not np.all(np.isfinite(got)) or err > GPU_AGREEMENT:
                reason = f"the GPU's output disagrees with the CPU's (relative error {err:.3g})"
        except (RuntimeError, ValueError, OSError) as exc:
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
        return self.backend.run(pad_to(tokens, bucket_length(tokens.shape[0])))


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
