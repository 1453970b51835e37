"""Native libraries print nothing raw on stderr: LiteRT's messages (also those it prints when a model it could
not put on the GPU is destroyed, and at exit) go to the debug log, libexiv2's are collected per photo.

The LiteRT cases bite on a host with the Vulkan loader (libvulkan1) and no GPU, where the GPU probe fails;
.ci/run installs the loader so that CI is such a host. The checks hold on every host.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from musiq_daemon.errors import DeviceError
from musiq_daemon.model.store import model_path
from musiq_daemon.model.verify import sample_photos
from musiq_daemon.native_log import capture_native_stderr
from musiq_daemon.runtime import open_engine, vulkan_available

MUSIQD = [sys.executable, "-m", "musiq_daemon"]

#: Raw lines of native libraries as they reach stderr when nothing catches them.
RAW_NATIVE = re.compile(
    r"^(INFO|WARNING|ERROR): \[|^WARNING: All log messages|^WARNING: Logging before|^[IWEF]\d{4} "
    r"|exiv2|DestroyAccelerator|vkCreateInstance|Unexpected end of file",
    re.MULTILINE,
)


def exif_jpeg(tag: int = 0x010E, size: tuple[int, int] = (240, 320), seed: int = 0) -> bytes:
    """A photo whose EXIF IFD0 has one ASCII entry ``tag`` pointing far outside the EXIF block: libexiv2
    reads the rest and logs "Offset of directory Image, entry 0x.... is out of bounds"."""
    buffer = io.BytesIO()
    Image.fromarray(sample_photos(1, size=size, seed=seed)[0]).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    ifd = struct.pack(">H", 1) + struct.pack(">HHII", tag, 2, 100, 0xFFFF) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five photos: a JPEG, a PNG, a WebP, a JPEG with broken EXIF, and a JPEG cut after its header."""
    folder = tmp_path / "photos"
    folder.mkdir()
    images = sample_photos(3, size=(240, 320), seed=3)
    Image.fromarray(images[0]).save(folder / "a.jpg", quality=92)
    Image.fromarray(images[1]).save(folder / "b.png")
    Image.fromarray(images[2]).save(folder / "c.webp", quality=80)
    (folder / "d broken exif.jpg").write_bytes(exif_jpeg())
    (folder / "e broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    return folder


# --- the command as a user runs it ------------------------------------------------------------------------


def without_summary(stderr: str, *, scored: int, failed: int) -> list[str]:
    """The lines of ``musiqd score``'s stderr before its last one, which must be the run's summary."""
    *lines, last = stderr.splitlines()
    summary = (
        rf"musiqd: {scored} scored, 0 skipped \(already scored; --force scores them again\), {failed} failed"
    )
    assert re.fullmatch(summary + r" in \d+\.\d s", last), stderr
    return lines


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_score_prints_only_musiqds_own_lines(env: dict[str, str], photos: Path, verbose: bool) -> None:
    """``musiqd score`` (device auto: on a host with a Vulkan loader, the GPU probe runs and fails) writes
    one stderr line per photo it could not score, ``musiqd: <photo>: <why>``, and with ``-v`` its own
    log lines (``LEVEL logger: message``); nothing else."""
    args = (["-v"] if verbose else []) + ["score", str(photos)]
    result = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 1 + 4  # header + the four readable photos
    assert not RAW_NATIVE.search(result.stderr), result.stderr
    lines = without_summary(result.stderr, scored=4, failed=1)
    own = [line for line in lines if line.startswith("musiqd: ")]
    logged = [line for line in lines if not line.startswith("musiqd: ")]
    assert len(own) == 1 and "e broken.jpg" in own[0], result.stderr
    if not verbose:
        assert logged == [], result.stderr
    else:
        assert logged and all(re.match(r"(DEBUG|INFO|WARNING|ERROR) [\w.]+: ", line) for line in logged)
        assert any("inference on CPU" in line for line in logged), result.stderr


ENGINE_LIFECYCLE = r"""
import contextlib, gc, logging, sys
from pathlib import Path

logging.basicConfig(level=logging.DEBUG, filename=sys.argv[2], format="%(name)s %(levelname)s %(message)s")
from musiq_daemon.errors import DeviceError
from musiq_daemon.runtime import open_engine

model = Path(sys.argv[1])
first = open_engine(model, num_outputs=1, device="auto")
del first
gc.collect()
with contextlib.suppress(DeviceError):
    open_engine(model, num_outputs=1, device="gpu")
gc.collect()
kept = open_engine(model, num_outputs=1, device="auto")  # alive until the interpreter exits
print(kept.device)
"""


def test_engine_creation_probe_destruction_and_exit_print_nothing(models_root: Path, tmp_path: Path) -> None:
    """Every phase of an engine's life - the GPU attempt, the probe, dropping a failed GPU, garbage
    collection and interpreter exit with an engine still alive - keeps stderr empty; what LiteRT printed
    is in the debug log instead."""
    log_file = tmp_path / "debug.log"
    model = model_path("koniq", "fp32", models_root)
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_LIFECYCLE, str(model), str(log_file)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() in ("cpu", "gpu")
    if vulkan_available():  # LiteRT was asked for its GPU: it always prints then
        native = [line for line in log_file.read_text().splitlines() if " DEBUG native: " in line]
        assert native, log_file.read_text()


def test_gpu_request_is_answered_in_one_line_of_words(models_root: Path) -> None:
    """``--device gpu`` either gets the GPU or says why in one line - LiteRT's own error text, taken from
    what it printed, not the bare source location its exception carries."""
    try:
        engine = open_engine(model_path("koniq", "fp32", models_root), num_outputs=1, device="gpu")
    except DeviceError as exc:
        message = str(exc)
        assert "\n" not in message
        assert not re.search(r"\[[\w./-]+\.(h|cc):\d+\]", message), message
        assert re.search(r"no usable GPU \(\w|no Vulkan loader|disagrees", message), message
    else:
        assert engine.device == "gpu"


def test_native_output_is_captured_then_logged_at_debug(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """File descriptor 2 goes to a capture while native code runs (nested blocks share the outermost
    capture), comes back afterwards - also when the block raises - and what was written is logged."""
    caplog.set_level(logging.DEBUG, logger="musiq_daemon.native_log")
    with capture_native_stderr() as outer:
        os.write(2, b"outer noise\n")
        with capture_native_stderr() as inner:
            os.write(2, b"inner noise\n")
    with pytest.raises(RuntimeError), capture_native_stderr() as failed:
        os.write(2, b"noise before a failure\n")
        raise RuntimeError("native call failed")
    os.write(2, b"back on stderr\n")
    assert capfd.readouterr().err == "back on stderr\n"
    assert outer.text == "outer noise\ninner noise\n" and inner.text == ""
    assert failed.text == "noise before a failure\n"
    logged = [r.getMessage() for r in caplog.records if r.name == "musiq_daemon.native_log"]
    assert logged == ["native: outer noise", "native: inner noise", "native: noise before a failure"]


TRUNCATED_RAW = "photo.dng"


def test_truncated_raw_is_reported_once(env: dict[str, str], tmp_path: Path) -> None:
    from imagegen import dng_bytes

    data = dng_bytes(512, 384)
    photo = tmp_path / TRUNCATED_RAW
    photo.write_bytes(data[: len(data) // 2])
    result = subprocess.run(
        [*MUSIQD, "score", "--device", "cpu", "--no-index", str(photo)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = without_summary(result.stderr, scored=0, failed=1)
    assert len(lines) == 1 and lines[0].startswith("musiqd: ") and TRUNCATED_RAW in lines[0], result.stderr


# --- libexiv2's messages --------------------------------------------------------------------------------

CLI_LOGGING = (
    "import logging, sys\n"
    "logging.basicConfig(\n"
    "    level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr\n"
    ")\n"
)

COLLECT = (
    CLI_LOGGING
    + r"""
import json
import exiv2
from musiq_daemon.native_log import exiv2_messages, summarise

data = open(sys.argv[1], "rb").read()
with exiv2_messages() as messages:
    image = exiv2.ImageFactory.open(data)
    image.readMetadata()
print(json.dumps({"messages": [m.text for m in messages], "line": summarise("IMG_0001.jpg", messages)}))
"""
)


def test_exiv2_messages_are_collected_and_printed_nowhere(tmp_path: Path) -> None:
    """With the CLI's logging set up, a photo whose EXIF libexiv2 complains about: the complaint is
    collected in the block, becomes one line naming the photo, and nothing reaches stderr."""
    photo = tmp_path / "broken_exif.jpg"
    photo.write_bytes(exif_jpeg(0x010E))
    result = subprocess.run(
        [sys.executable, "-c", COLLECT, str(photo)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["messages"] and all("0x010e" in m for m in out["messages"]), out
    line = out["line"]
    assert line.startswith("IMG_0001.jpg: exiv2 ") and "0x010e is out of bounds" in line and "\n" not in line


OUTSIDE_A_BLOCK = (
    CLI_LOGGING
    + r"""
import musiq_daemon.metadata.xmp  # what the code that calls libexiv2 imports
import exiv2

debug = logging.StreamHandler(sys.stdout)
logging.getLogger("musiq_daemon").addHandler(debug)
logging.getLogger("musiq_daemon").setLevel(logging.DEBUG)
logging.getLogger("musiq_daemon").propagate = False
image = exiv2.ImageFactory.open(open(sys.argv[1], "rb").read())
image.readMetadata()
"""
)


def test_exiv2_messages_outside_a_block_go_to_the_debug_log(tmp_path: Path) -> None:
    """Once a module that calls libexiv2 is imported, its messages never reach stderr raw (the CLI's
    handler printed them as ``ERROR exiv2: ...``, naming no photo): outside a block they are debug lines."""
    photo = tmp_path / "broken_exif.jpg"
    photo.write_bytes(exif_jpeg(0x010F))
    result = subprocess.run(
        [sys.executable, "-c", OUTSIDE_A_BLOCK, str(photo)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "exiv2 error: Offset of directory Image, entry 0x010f is out of bounds" in result.stdout


def test_every_module_that_imports_exiv2_routes_its_messages() -> None:
    """Importing :mod:`musiq_daemon.native_log` installs the router. The metadata package does not import
    it for all its modules (commands that write nothing must not load exiv2), so each module that imports
    exiv2 imports native_log itself."""
    import ast

    package = Path(__file__).resolve().parent.parent / "musiq_daemon"
    unrouted = []
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        if "exiv2" in names and "musiq_daemon.native_log" not in names and path.name != "native_log.py":
            unrouted.append(str(path.relative_to(package)))
    assert unrouted == []


def test_writing_a_photo_with_broken_exif_prints_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """``score --write`` reads the photo's metadata with libexiv2, which complains about the broken EXIF:
    the complaint is the writer's (debug) business, not a raw stderr line."""
    photo = tmp_path / "broken exif.jpg"
    photo.write_bytes(exif_jpeg(0x010E))
    args = ["score", "--write", "--write-mode", "sidecar", "--device", "cpu", "--no-index", str(photo)]
    result = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert without_summary(result.stderr, scored=1, failed=0) == []
    assert "[sidecar]" in result.stdout


def test_each_thread_collects_its_own_photos_messages() -> None:
    """Daemon workers read metadata concurrently: each block gets the messages of its own photo only, and
    an inner block takes them from an outer one."""
    import exiv2

    from musiq_daemon.native_log import exiv2_messages

    tags = [0x010E, 0x010F, 0x0110, 0x0131]
    files = {tag: exif_jpeg(tag, size=(48, 64)) for tag in tags}
    barrier = threading.Barrier(len(tags))
    got: dict[int, list[str]] = {}

    def read(tag: int) -> None:
        collected: list[str] = []
        barrier.wait()
        for _ in range(20):
            with exiv2_messages() as messages:
                image = exiv2.ImageFactory.open(files[tag])
                image.readMetadata()
            collected += [m.text for m in messages]
        got[tag] = collected

    threads = [threading.Thread(target=read, args=(tag,)) for tag in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tag in tags:
        assert len(got[tag]) == 20 and all(f"entry 0x{tag:04x} " in m for m in got[tag]), got[tag]

    with exiv2_messages() as outer:
        with exiv2_messages() as inner:
            exiv2.ImageFactory.open(files[tags[0]]).readMetadata()
        assert outer == [] and len(inner) == 1
        exiv2.ImageFactory.open(files[tags[1]]).readMetadata()
    assert len(outer) == 1 and "0x010f" in outer[0].text


def test_summary_line() -> None:
    from musiq_daemon.native_log import NativeMessage, summarise

    warn = NativeMessage(logging.WARNING, "Directory Image: Next pointer is out of bounds; ignored")
    error = NativeMessage(logging.ERROR, "Offset of directory Photo, entry 0x9003 is out of bounds")
    assert summarise("a.jpg", []) is None
    assert summarise("a.jpg", [warn, warn]) == f"a.jpg: exiv2 warning: {warn.text}"
    assert summarise("a.jpg", [warn, error, warn]) == f"a.jpg: exiv2 error: {error.text} (+1 more)"
    long = summarise("a.jpg", [NativeMessage(logging.WARNING, "x" * 1000)])
    assert long is not None and len(long) < 400 and long.endswith("...")
