"""Files built to hurt: a sparse giant (a valid JPEG followed by gigabytes of holes), files larger than any
photo and pixel bombs are refused before they cost memory, with musiqd's own one-line messages, and a
write never touches them. Real files on disk; the command runs as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from imagegen import jpeg_bytes
from PIL import Image
from test_metadata_write import record

from musiq_daemon import config, decode
from musiq_daemon.decode import decode_image, read_head
from musiq_daemon.errors import ConfigError, DecodeError
from musiq_daemon.metadata.content_hash import content_hash_file
from musiq_daemon.metadata.safefile import TEMP_PREFIX
from musiq_daemon.metadata.writer import WritePolicy, write_scores

GIANT = 3 * 1024**3
PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS out of the box
# Runs a command and prints its peak resident memory (kB) as the last line of stderr.
PEAK_RSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def refusal(source: Path | bytes, **kwargs: object) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def state(path: Path) -> tuple[int, int, int, int, bytes]:
    """What a write would change: inode, length, blocks on disk, modification time, and the data."""
    info = path.stat()
    with path.open("rb") as f:
        data = f.read(1 << 20)
    return info.st_ino, info.st_size, info.st_blocks, info.st_mtime_ns, data


@pytest.fixture
def giant(tmp_path: Path) -> Path:
    """A valid small JPEG made 3 GB long by a hole (about 100 KB on disk)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / "giant.jpg"
    path.write_bytes(jpeg_bytes(64, 48))
    os.truncate(path, GIANT)
    if path.stat().st_blocks * 512 * 2 >= GIANT:
        pytest.skip("this file system does not keep holes")
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200.02 MP PNG (one bit a pixel, all black): 25 KB on disk, just above max_pixels."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (20_000, 10_001)).save(path)
    return path


# --- sparse and oversized files ----------------------------------------------------------------------------


def test_a_sparse_giant_is_refused_at_once(giant: Path) -> None:
    start = time.monotonic()
    message = refusal(giant)
    assert time.monotonic() - start < 1.0
    assert message.startswith(f"{giant}: file is sparse (")
    assert "KB on disk, 3.2 GB long): not a photo" in message and "cp --sparse=never" in message
    assert refusal(giant, min_long_side=224) == message
    for check in (lambda: read_head(giant, str(giant)), lambda: content_hash_file(giant)):
        with pytest.raises(DecodeError, match="is sparse"):
            check()


@pytest.mark.parametrize("write", [False, True], ids=["score", "score --write"])
def test_a_sparse_giant_costs_no_memory_and_is_never_written(
    env: dict[str, str], giant: Path, write: bool
) -> None:
    before = state(giant)
    command = [sys.executable, "-m", "musiq_daemon", "score", "--device", "cpu", str(giant)]
    if write:
        command.insert(-1, "--write")
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], env=env, capture_output=True, text=True, timeout=120
    )
    lines = result.stderr.splitlines()
    peak_mb = int(lines[-1]) / 1024
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"musiqd: {giant}: file is sparse ("), result.stderr
    assert peak_mb < 400, f"peak {peak_mb:.0f} MB"
    assert state(giant) == before  # not rewritten, not filled in: still 3 GB of holes
    assert [p.name for p in giant.parent.iterdir()] == [giant.name]  # no sidecar, no temporary file


def test_the_writer_refuses_sparse_and_oversized_photos(giant: Path, tmp_path: Path) -> None:
    before = state(giant)
    with pytest.raises(DecodeError, match=r"file is sparse \(.* on disk, 3\.2 GB long\): not a photo"):
        write_scores(giant, [record()])
    assert state(giant) == before
    photo = tmp_path / "big.jpg"
    photo.write_bytes(jpeg_bytes(64, 48) + os.urandom(1_500_000))
    before = state(photo)
    with pytest.raises(DecodeError) as caught:
        write_scores(photo, [record()], max_file_mb={"jpeg": 1})
    assert "more than max_file_mb.jpeg=1 allows; raise the max_file_mb setting for jpeg" in str(caught.value)
    assert state(photo) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.suffix == ".xmp"]


def test_files_larger_than_their_format_allows_are_refused(tmp_path: Path) -> None:
    plain = jpeg_bytes(64, 48)
    # Data after the end of the image (here 1.5 MB of noise) is accepted: the limit bounds what it costs.
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(plain + os.urandom(1_500_000))
    size = trailing.stat().st_size
    np.testing.assert_array_equal(decode_image(trailing).pixels, decode_image(plain).pixels)
    message = refusal(trailing, max_file_mb={"jpeg": 1})
    assert message == (
        f"{trailing}: file is {size / 1e6:.1f} MB, more than max_file_mb.jpeg=1 allows; "
        "raise the max_file_mb setting for jpeg to read it"
    )
    assert "max_file_mb.jpeg=1" in refusal(trailing.read_bytes(), max_file_mb={"jpeg": 1})
    with pytest.raises(DecodeError, match=r"max_file_mb\.jpeg=1"):
        read_head(trailing, "x", max_file_mb={"jpeg": 1})
    # The other formats keep their limits.
    png = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(png)
    assert decode_image(png, max_file_mb={"jpeg": 1}).stored_size == (64, 48)


def test_an_oversized_sidecar_is_left_alone(tmp_path: Path) -> None:
    photo = tmp_path / "IMG_1.jpg"
    photo.write_bytes(jpeg_bytes(64, 48))
    sidecar = tmp_path / "IMG_1.jpg.xmp"
    sidecar.write_bytes(b"<x:xmpmeta")
    os.truncate(sidecar, 65_000_000)  # its length is all that counts, holes or not
    before = state(photo), state(sidecar)
    with pytest.raises(DecodeError, match=r"XMP sidecar is 65\.0 MB, larger than any real one \(64\.0 MB\)"):
        write_scores(photo, [record()], WritePolicy(mode="sidecar"))
    assert (state(photo), state(sidecar)) == before


def test_the_configuration_and_the_decoder_agree_on_file_limits() -> None:
    assert dict(config.DEFAULT_MAX_FILE_MB) == dict(decode.DEFAULT_MAX_FILE_MB)
    assert config.Config().max_file_mb == dict(decode.DEFAULT_MAX_FILE_MB)
    formats = ["JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "HEIF", "AVIF", "RAW:CR2", "RAW:DNG"]
    assert {decode.file_limit_key(f) for f in formats} == set(decode.DEFAULT_MAX_FILE_MB)


def test_max_file_mb_setting(tmp_path: Path) -> None:
    """Each source changes only the formats it names; the table round-trips through `config show`."""
    path = tmp_path / "config.toml"
    path.write_text("max_file_mb.tiff = 2048\n", encoding="utf-8")
    loaded, sources = config.load_config_with_sources(
        path, env={"MUSIQD_MAX_FILE_MB": "raw=1000"}, overrides={"max_file_mb": {"jpeg": 300}}
    )
    assert loaded.max_file_mb == {**decode.DEFAULT_MAX_FILE_MB, "tiff": 2048, "raw": 1000, "jpeg": 300}
    assert sources["max_file_mb"] == "command line"
    shown = tmp_path / "shown.toml"
    shown.write_text(loaded.to_toml(sources), encoding="utf-8")
    assert config.load_config(shown, env={}) == loaded
    for text, problem in [
        ("max_file_mb = 300", "max_file_mb: must be a table of MB by format, e.g. {tiff = 2048}"),
        ("max_file_mb = {jpg = 300}", 'max_file_mb: unknown format "jpg" (did you mean "jpeg"?)'),
        ("max_file_mb.raw = 0", "max_file_mb: raw: must be at least 1 (got 0)"),
    ]:
        path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            config.load_config(path, env={})
        assert str(caught.value).startswith(f"config error: {path}: {problem}")
    with pytest.raises(
        ConfigError, match="environment variable MUSIQD_MAX_FILE_MB: must look like tiff=2048"
    ):
        config.load_config(None, env={"MUSIQD_MAX_FILE_MB": "2048"}, system_file=tmp_path / "none.toml")


# --- pixel bombs: musiqd's max_pixels speaks, Pillow stays quiet --------------------------------------------


def test_a_pixel_bomb_gets_musiqds_message_and_no_warning(env: dict[str, str], bomb: Path) -> None:
    command = [sys.executable, "-m", "musiq_daemon", "score", "--device", "cpu", str(bomb)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"musiqd: {bomb}: image is 20000x10001 (200.0 megapixels), more than max_pixels=200_000_000 allows; "
        "raise the max_pixels setting to decode it"
    )
    assert len(result.stderr.splitlines()) == 2  # the message and the summary, nothing else
    assert "MAX_IMAGE_PIXELS" not in result.stderr and "Warning" not in result.stderr


def test_pillow_never_preempts_max_pixels(
    bomb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_LIMIT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Above twice Pillow's default (179 MP) and within max_pixels: decoded.
        between = tmp_path / "between.png"
        Image.new("1", (19_000, 10_000)).save(between)
        decoded = decode_image(between, min_long_side=1024)
        assert decoded.stored_size == (19_000, 10_000) and decoded.source == "reduce-1/18"
        # Just above max_pixels: Pillow's warning (its limit is now max_pixels) is not heard, musiqd refuses.
        assert "200.0 megapixels), more than max_pixels=200_000_000 allows" in refusal(bomb)
        # Pillow's own guard fires first only above twice its limit; the message is still musiqd's.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
        message = refusal(bomb, max_pixels=5_000_000)
        assert message == (
            f"{bomb}: image has 200.0 megapixels, more than max_pixels=5_000_000 allows; "
            "raise the max_pixels setting to decode it"
        )
    assert [str(w.message) for w in caught] == []


def test_quiet_pillow_leaves_the_warning_filters_as_they_were(bomb: Path, tmp_path: Path) -> None:
    """Decodes overlapping in threads share one quiet block, so the filters come back exactly."""
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(small)
    filters = list(warnings.filters)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                decode_image(small)
                with pytest.raises(DecodeError):
                    decode_image(bomb)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert warnings.filters == filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("still heard", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["still heard"]


def test_the_max_file_mb_setting_reaches_score_and_its_writes(env: dict[str, str], tmp_path: Path) -> None:
    """The configured limit, not the built-in default, decides: a 1 MB limit refuses a 2 MB JPEG."""
    from imagegen import jpeg_bytes

    photo = tmp_path / "big.jpg"
    data = jpeg_bytes(640, 480, seed=5)
    padded = data[:2] + (b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(range(256)) * 255 + b"x" * 253) * 32
    photo.write_bytes(padded + data[2:])  # a valid JPEG of about 2 MB (APP15 segments before the image)
    assert photo.stat().st_size > 2_000_000
    limited = {**env, "MUSIQD_MAX_FILE_MB": "jpeg=1"}
    command = [sys.executable, "-m", "musiq_daemon", "score", "--write", "--device", "cpu", str(photo)]
    refused = subprocess.run(command, env=limited, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "more than max_file_mb.jpeg=1 allows" in refused.stderr, refused.stderr
    scored = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0 and "[embedded]" in scored.stdout, scored.stderr
