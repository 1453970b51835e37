"""The converter: every converted model runs in the real LiteRT interpreter and is checked against the
NumPy reference forward pass (the numerical oracle).

Tiny configurations cover the graph itself (all token counts, padding, both head sizes) in seconds. The
full-size model is converted at most once per head size and variant in a session (a conversion takes
about 15 s) and checked for fp32 exactness and for the measured quantization error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from ai_edge_litert.interpreter import Interpreter
from imagegen import scene

import musiq_daemon
from musiq_daemon.errors import ConversionError
from musiq_daemon.model.config import (
    ENCODER_SIGNATURE,
    HASH_GRID,
    NUM_SCALES,
    STEM_SIGNATURE,
    TOKEN_DIM,
    TOKEN_PIXELS,
    MusiqConfig,
)
from musiq_daemon.model.convert import (
    COMPUTED_METADATA,
    KEEP_FLOAT,
    REQUIRED_METADATA,
    VARIANTS,
    ModelInfo,
    convert_checkpoint,
    convert_signature,
    model_ops,
)
from musiq_daemon.model.reference import forward, raw_score
from musiq_daemon.model.synthetic import synthetic_params
from musiq_daemon.preprocess import make_tokens
from musiq_daemon.runtime import Engine, open_engine

F32 = npt.NDArray[np.float32]
Params = dict[str, F32]

SOURCE = {"model_id": "koniq", "checkpoint_file": "koniq_ckpt.npz", "checkpoint_sha256": "ab" * 32}

#: Ops the graph may use: all builtin, all taken by XNNPACK (fp16 adds DEQUANTIZE for its weights).
XNNPACK_OPS = {
    "ABS",
    "ADD",
    "BATCH_MATMUL",
    "CONCATENATION",
    "CONV_2D",
    "DEQUANTIZE",
    "FULLY_CONNECTED",
    "GELU",
    "MAX_POOL_2D",
    "MEAN",
    "MUL",
    "RESHAPE",
    "RSQRT",
    "SOFTMAX",
    "SQUARE",
    "SQUARED_DIFFERENCE",
    "STRIDED_SLICE",
    "SUB",
    "TRANSPOSE",
}

#: Bounds on the largest relative error of the raw score (the MOS for 1 class, the softmax mean over bins
#: 1..10 for AVA's 10) against the reference, over the ten photo-like images. Derived from measurements
#: with five synthetic weight draws (seeds 0-4; TF 2.21 converter, LiteRT 2.3), worst case: fp16 5.5e-4
#: (1 class) and 4.6e-4 (10); dynamic-int8 1.3e-2 (1 class) and 3.7e-2 (10). The tests use seed 0
#: (fp16 5.5e-4 / 1.6e-4, dynamic-int8 4.4e-3 / 6.7e-3). The bounds sit 1.6-2.7x above the worst case,
#: leaving room for other CPUs' kernels (XNNPACK picks micro-kernels per instruction set).
QUANTIZED_TOLERANCE = {
    ("fp16", 1): 1.5e-3,
    ("fp16", 10): 1.5e-3,
    ("dynamic-int8", 1): 3e-2,
    ("dynamic-int8", 10): 6e-2,
}

# ------------------------------------------------------------------------------------------- helpers


def relative_error(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(a - e)) / np.max(np.abs(e)))


def random_tokens(rng: np.random.Generator, n: int) -> F32:
    """Tokens shaped like real ones: pixels in [-1, 1], valid spatial indices and scale ids, mask 1."""
    tokens = np.zeros((n, TOKEN_DIM), dtype=np.float32)
    tokens[:, :TOKEN_PIXELS] = rng.uniform(-1.0, 1.0, size=(n, TOKEN_PIXELS))
    tokens[:, TOKEN_PIXELS] = rng.integers(0, HASH_GRID * HASH_GRID, size=n)
    tokens[:, TOKEN_PIXELS + 1] = rng.integers(0, NUM_SCALES, size=n)
    tokens[:, TOKEN_PIXELS + 2] = 1.0
    return tokens


def run(engine: Engine, tokens: F32) -> F32:
    """The head output (num_classes,) for (N, 3075) tokens, through the runtime that scores photos."""
    return engine.run(tokens)


def open_model(path: Path) -> Engine:
    return open_engine(path, num_outputs=1, device="cpu", threads=2)  # XNNPACK is on by default


def assert_fully_delegated(
    params: Params, config: MusiqConfig, variant: str, lengths: tuple[int, ...] = (7, 64)
) -> None:
    """XNNPACK takes each signature whole: one delegate node, fed by its inputs, producing its output."""
    for signature, inputs in ((STEM_SIGNATURE, ["tokens"]), (ENCODER_SIGNATURE, ["embeddings", "mask"])):
        flatbuffer = convert_signature(params, config, variant=variant, signature=signature)
        interpreter = Interpreter(model_content=flatbuffer, num_threads=2)
        details = interpreter.get_input_details()
        assert sorted(d["name"].split(":")[0].rsplit("_", 1)[-1] for d in details) == sorted(inputs)
        for n in lengths:  # delegation must hold whatever the sequence length
            for d in details:
                shape = [n, *d["shape"][1:]] if len(d["shape"]) > 1 else [n]
                interpreter.resize_tensor_input(d["index"], shape)
            interpreter.allocate_tensors()
            # Private, but the only view of the execution plan the Python API gives.
            nodes = interpreter._get_ops_details()
            delegates = [node for node in nodes if node["op_name"] == "DELEGATE"]
            assert len(delegates) == 1, (signature, [node["op_name"] for node in nodes])
            assert {d["index"] for d in details} <= set(delegates[0]["inputs"])
            assert list(delegates[0]["outputs"]) == [interpreter.get_output_details()[0]["index"]]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Params, MusiqConfig, ModelInfo]]:
    """fp32 conversions of the tiny configuration, with a 1-class and a 10-class head."""
    root = tmp_path_factory.mktemp("tiny")
    models = {}
    for classes in (1, 10):
        config = MusiqConfig.tiny(classes)
        params = synthetic_params(config, seed=classes)
        info = convert_checkpoint(
            params, config, variant="fp32", out_path=root / f"tiny{classes}.tflite", metadata=SOURCE
        )
        models[classes] = (params, config, info)
    return models


FullModel = Callable[[int, str], tuple[Params, MusiqConfig, ModelInfo]]


@pytest.fixture(scope="session")
def full_params() -> dict[int, Params]:
    """Synthetic full-size weights for a 1-class (MOS) and a 10-class (AVA) head."""
    return {classes: synthetic_params(MusiqConfig(num_classes=classes)) for classes in (1, 10)}


@pytest.fixture(scope="session")
def full_model(tmp_path_factory: pytest.TempPathFactory, full_params: dict[int, Params]) -> FullModel:
    """Full-size conversions on demand, each done at most once per session."""
    root = tmp_path_factory.mktemp("full")
    done: dict[tuple[int, str], ModelInfo] = {}

    def get(classes: int, variant: str) -> tuple[Params, MusiqConfig, ModelInfo]:
        config = MusiqConfig(num_classes=classes)
        if (classes, variant) not in done:
            out = root / f"full{classes}" / f"{variant}.tflite"
            done[classes, variant] = convert_checkpoint(
                full_params[classes], config, variant=variant, out_path=out, metadata=SOURCE
            )
        return full_params[classes], config, done[classes, variant]

    return get


#: (width, height) of the photo-like test images: landscape and portrait, 343 to 473 tokens; the first
#: is the 512x384 case (385 tokens) that the published scores use.
PHOTO_SIZES = [
    (512, 384),
    (384, 512),
    (640, 427),
    (427, 640),
    (480, 320),
    (320, 480),
    (600, 400),
    (400, 600),
    (512, 512),
    (544, 362),
]


@pytest.fixture(scope="session")
def photo_tokens() -> list[F32]:
    """The official token sequences of ten photo-like images (gradients, texture, hard edges, noise)."""
    return [make_tokens(scene(w, h, seed=seed)).tokens for seed, (w, h) in enumerate(PHOTO_SIZES)]


@pytest.fixture(scope="session")
def full_reference(photo_tokens: list[F32], full_params: dict[int, Params]) -> dict[int, list[F32]]:
    """The reference head outputs of the full-size synthetic models on the photo tokens."""
    return {
        classes: [forward(params, MusiqConfig(num_classes=classes), tokens) for tokens in photo_tokens]
        for classes, params in full_params.items()
    }


# ---------------------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("classes", [1, 10])
def test_tiny_fp32_matches_reference(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]], classes: int
) -> None:
    params, config, info = tiny_models[classes]
    interpreter = open_model(info.path)
    rng = np.random.default_rng(classes)
    # One interpreter, resized up and down: the dynamic sequence length must survive reallocation.
    for n in (385, 1, 50):
        tokens = random_tokens(rng, n)
        output = run(interpreter, tokens)
        assert output.shape == (config.num_classes,)
        assert relative_error(output, forward(params, config, tokens)) < 1e-4, n


@pytest.mark.parametrize("classes", [1, 10])
def test_padding_rows_do_not_change_the_output(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]], classes: int
) -> None:
    _, _, info = tiny_models[classes]
    interpreter = open_model(info.path)
    rng = np.random.default_rng(3)
    tokens = random_tokens(rng, 50)
    unpadded = run(interpreter, tokens)
    zero_rows = np.concatenate([tokens, np.zeros((46, TOKEN_DIM), np.float32)])
    # Whatever a padding row holds, mask 0 must hide it.
    junk_rows = random_tokens(rng, 46)
    junk_rows[:, -1] = 0.0
    for padded in (zero_rows, np.concatenate([tokens, junk_rows])):
        assert relative_error(run(interpreter, padded), unpadded) < 1e-5


def test_tiny_model_is_fully_delegated_and_builtin(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]],
) -> None:
    for params, config, info in tiny_models.values():
        assert set(model_ops(info.path.read_bytes())) <= XNNPACK_OPS
        assert_fully_delegated(params, config, "fp32")


def test_metadata_json_describes_the_file(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]], tmp_path: Path
) -> None:
    params, config, _ = tiny_models[10]
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out = tmp_path / "ava" / "fp32.tflite"
    info = convert_checkpoint(
        params, config, variant="fp32", out_path=out, metadata={**SOURCE, "mapping": "softmax-mean"}
    )
    assert info.path == out and info.variant == "fp32"
    assert info.metadata_path == tmp_path / "ava" / "fp32.json"
    meta = json.loads(info.metadata_path.read_text(encoding="utf-8"))
    assert meta == dict(info.metadata)
    assert set(COMPUTED_METADATA) | set(REQUIRED_METADATA) | {"mapping"} == set(meta)
    data = out.read_bytes()
    assert meta["tflite_sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["tflite_size"] == len(data)
    assert meta["tflite_file"] == "fp32.tflite"
    assert meta["model_id"] == "koniq" and meta["mapping"] == "softmax-mean"
    assert meta["checkpoint_file"] == "koniq_ckpt.npz" and meta["checkpoint_sha256"] == "ab" * 32
    assert meta["variant"] == "fp32" and meta["num_classes"] == 10
    assert meta["config"] == asdict(config)
    assert meta["musiq_daemon_version"] == musiq_daemon.__version__
    assert meta["tensorflow_version"].count(".") >= 2
    created = dt.datetime.fromisoformat(meta["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert before <= created <= dt.datetime.now(dt.UTC)
    assert "3075" in meta["input"] and "mask" in meta["input"]
    # Written atomically: nothing but the two files is left behind, readable by other users (a service).
    assert sorted(p.name for p in out.parent.iterdir()) == ["fp32.json", "fp32.tflite"]
    assert out.stat().st_mode & 0o777 == 0o644 == info.metadata_path.stat().st_mode & 0o777


def test_dynamic_int8_tiny_conversion_is_quiet_and_close(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    params, config, _ = tiny_models[1]
    capfd.readouterr()
    info = convert_checkpoint(
        params, config, variant="dynamic-int8", out_path=tmp_path / "q.tflite", metadata=SOURCE
    )
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", "conversion printed log lines"
    tokens = random_tokens(np.random.default_rng(5), 60)
    output = run(open_model(info.path), tokens)
    assert relative_error(output, forward(params, config, tokens)) < 2e-2
    assert "kept in float32" in info.metadata["quantization"]

    # Exactly the layers KEEP_FLOAT names keep float32 weights; every other weight layer is int8.
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(info.path.read_bytes(), 0)
    weighted = {schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.CONV_2D}
    kinds: dict[str, set[int]] = {"float": set(), "int8": set()}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() not in weighted:
                continue
            name = graph.Tensors(op.Outputs(0)).Name().decode()
            weight_type = graph.Tensors(op.Inputs(1)).Type()
            keep = any(re.search(rx, name) for rx in KEEP_FLOAT)
            assert weight_type == (schema.TensorType.FLOAT32 if keep else schema.TensorType.INT8), name
            kinds["float" if keep else "int8"].add(i)
    assert kinds["float"] and kinds["int8"]


# ------------------------------------------------------------------------------------------- failures


def test_bad_variant_is_rejected(tmp_path: Path) -> None:
    config = MusiqConfig.tiny(1)
    with pytest.raises(ConversionError) as raised:
        convert_checkpoint(
            synthetic_params(config), config, variant="int4", out_path=tmp_path / "m.tflite", metadata=SOURCE
        )
    assert str(raised.value) == "unknown model variant 'int4': choose one of fp32, fp16, dynamic-int8"
    assert VARIANTS == ("fp32", "fp16", "dynamic-int8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"model_id": "koniq"}, "lacks checkpoint_file, checkpoint_sha256"),
        ({**SOURCE, "tflite_sha256": "0" * 64}, "may not set tflite_sha256"),
    ],
)
def test_bad_metadata_is_rejected(tmp_path: Path, metadata: dict[str, object], message: str) -> None:
    config = MusiqConfig.tiny(1)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(
            synthetic_params(config),
            config,
            variant="fp32",
            out_path=tmp_path / "m.tflite",
            metadata=metadata,
        )
    assert list(tmp_path.iterdir()) == []


def test_wrong_parameters_are_rejected(tmp_path: Path) -> None:
    config = MusiqConfig.tiny(1)
    params = synthetic_params(config)
    params["head/kernel"] = np.zeros((32, 2), np.float32)
    with pytest.raises(ConversionError, match="head/kernel has shape"):
        convert_checkpoint(params, config, variant="fp32", out_path=tmp_path / "m.tflite", metadata=SOURCE)


def test_missing_tensorflow_is_explained(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
        from pathlib import Path
        from musiq_daemon.errors import ConversionError
        from musiq_daemon.model.config import MusiqConfig
        from musiq_daemon.model.convert import convert_checkpoint
        from musiq_daemon.model.synthetic import synthetic_params
        config = MusiqConfig.tiny(1)
        try:
            convert_checkpoint(synthetic_params(config), config, variant="fp32",
                               out_path=Path({str(tmp_path / "m.tflite")!r}), metadata={SOURCE!r})
        except ConversionError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout == (
        "converting needs TensorFlow: run .venv/bin/pip install -e '.[convert]' in the musiqd checkout\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_converter_failure_is_one_line(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tensorflow as tf  # already imported by the conversions of the fixture

    def fail(self: object) -> bytes:
        raise RuntimeError("could not translate MLIR to FlatBuffer\n<pages of MLIR dump>\nmore")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", fail)
    params, config, _ = tiny_models[1]
    with pytest.raises(ConversionError) as raised:
        convert_checkpoint(params, config, variant="fp16", out_path=tmp_path / "m.tflite", metadata=SOURCE)
    assert str(raised.value) == "TFLite conversion (fp16) failed: could not translate MLIR to FlatBuffer"
    assert list(tmp_path.iterdir()) == []


def test_model_with_flex_ops_is_rejected(
    tiny_models: dict[int, tuple[Params, MusiqConfig, ModelInfo]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tensorflow as tf  # already imported by the conversions of the fixture

    # Cumprod has no builtin TFLite kernel: allowing Select-TF ops turns it into a Flex op.
    function = tf.function(lambda x: tf.math.cumprod(x), input_signature=[tf.TensorSpec([4], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex_model = converter.convert()
    assert "FlexCumprod" in model_ops(flex_model)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", lambda self: flex_model)
    params, config, _ = tiny_models[1]
    with pytest.raises(ConversionError, match=r"non-builtin ops \(FlexCumprod\)") as raised:
        convert_checkpoint(params, config, variant="fp32", out_path=tmp_path / "m.tflite", metadata=SOURCE)
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ full-size model


@pytest.mark.slow
@pytest.mark.parametrize("classes", [1, 10])
def test_full_fp32_matches_reference(
    full_model: FullModel, photo_tokens: list[F32], full_reference: dict[int, list[F32]], classes: int
) -> None:
    params, config, info = full_model(classes, "fp32")
    tokens = photo_tokens[0]
    assert tokens.shape[0] == 385
    output = run(open_model(info.path), tokens)
    assert relative_error(output, full_reference[classes][0]) < 1e-4
    assert set(model_ops(info.path.read_bytes())) <= XNNPACK_OPS
    assert_fully_delegated(params, config, "fp32")


@pytest.mark.slow
@pytest.mark.parametrize("classes", [1, 10])
@pytest.mark.parametrize("variant", ["fp16", "dynamic-int8"])
def test_full_quantized_error_is_bounded(
    full_model: FullModel,
    photo_tokens: list[F32],
    full_reference: dict[int, list[F32]],
    variant: str,
    classes: int,
) -> None:
    params, config, info = full_model(classes, variant)
    _, _, fp32 = full_model(classes, "fp32")
    interpreter = open_model(info.path)
    expected = np.array([raw_score(head) for head in full_reference[classes]])
    actual = np.array([raw_score(run(interpreter, tokens)) for tokens in photo_tokens])
    errors = np.abs(actual - expected) / np.abs(expected)
    assert errors.max() < QUANTIZED_TOLERANCE[variant, classes], errors
    # The point of the variant: a smaller file (weights in 16 or 8 bits instead of 32; dynamic-int8 keeps
    # the KEEP_FLOAT layers, 6 MB of the 109, in float32).
    ratio = info.path.stat().st_size / fp32.path.stat().st_size
    assert ratio < (0.55 if variant == "fp16" else 0.35), ratio
    assert set(model_ops(info.path.read_bytes())) <= XNNPACK_OPS
    assert_fully_delegated(params, config, variant)
