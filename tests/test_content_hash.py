"""Content hashes: unchanged by metadata edits of an independent tool (exiftool), changed by any change of
the image data, independent of the file name, and a one-line DecodeError for broken files."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from imagegen import (
    camera_exif,
    jpeg_bytes,
    make_dng,
    make_heic,
    make_image,
    make_jpeg,
    motion_photo_bytes,
    png16_bytes,
    scene,
    scene16,
    tiff16_bytes,
)
from PIL import Image, TiffImagePlugin, features

from musiq_daemon.decode import decode_image
from musiq_daemon.errors import DecodeError
from musiq_daemon.metadata.content_hash import content_hash, content_hash_file

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")


def _png16(path: Path, seed: int) -> Path:
    path.write_bytes(png16_bytes(scene16(160, 120, seed=seed)))
    return path


def _tiff16(path: Path, seed: int) -> Path:
    path.write_bytes(tiff16_bytes(scene16(160, 120, seed=seed)))
    return path


def _restart_jpeg(path: Path, seed: int) -> Path:
    """A JPEG with restart markers (RST0-7 inside the scan data), as many cameras write them."""
    Image.fromarray(scene(320, 240, seed=seed)).save(
        path, "JPEG", quality=90, restart_marker_blocks=4, exif=camera_exif().tobytes()
    )
    return path


# name: (file name, maker(path, seed), expected hash prefix)
Maker = Callable[[Path, int], Path]
FORMATS: dict[str, tuple[str, Maker, str]] = {
    "jpeg": ("IMG_0001.jpg", lambda p, s: make_jpeg(p, 320, 240, exif_orientation=6, seed=s), "jpeg-scan"),
    "jpeg-progressive": (
        "IMG_0002.jpg",
        lambda p, s: make_jpeg(p, 320, 240, progressive=True, subsampling="4:4:4", seed=s),
        "jpeg-scan",
    ),
    "jpeg-restart": ("IMG_0003.jpg", _restart_jpeg, "jpeg-scan"),
    "jpeg-grey": ("IMG_0004.jpg", lambda p, s: make_jpeg(p, 320, 240, mode="L", seed=s), "jpeg-scan"),
    "png": ("photo.png", lambda p, s: make_image(p, 320, 240, seed=s), "png-idat"),
    "png-rgba": ("cutout.png", lambda p, s: make_image(p, 320, 240, mode="RGBA", seed=s), "png-idat"),
    "png-16bit": ("scan16.png", _png16, "png-idat"),
    "webp": ("photo.webp", lambda p, s: make_image(p, 320, 240, quality=85, seed=s), "webp-bitstream"),
    "webp-lossless": (
        "graphic.webp",
        lambda p, s: make_image(p, 320, 240, lossless=True, seed=s),
        "webp-bitstream",
    ),
    "tiff": ("photo.tif", lambda p, s: make_image(p, 320, 240, seed=s), "tiff-strips"),
    "tiff-lzw": (
        "photo_lzw.tif",
        lambda p, s: make_image(p, 320, 240, compression="tiff_lzw", camera=False, seed=s),
        "tiff-strips",
    ),
    "tiff-16bit": ("scan16.tif", _tiff16, "tiff-strips"),
    "heic": ("IMG_0005.heic", lambda p, s: make_heic(p, 320, 240, exif_orientation=6, seed=s), "pixels"),
    "avif": ("photo.avif", lambda p, s: make_image(p, 320, 240, quality=90, seed=s), "pixels"),
    "gif": ("anim.gif", lambda p, s: make_image(p, 320, 240, mode="P", seed=s), "pixels"),
    "dng": ("IMG_0006.dng", lambda p, s: make_dng(p, 320, 240, preview=(160, 120), seed=s), "raw-sensor"),
}
# BMP carries no metadata exiftool could write; it is covered by the pixel and naming tests.
PIXEL_ONLY: dict[str, tuple[str, Maker, str]] = {
    "bmp": ("photo.bmp", lambda p, s: make_image(p, 320, 240, camera=False, seed=s), "pixels"),
}


def make(tmp_path: Path, kind: str, seed: int = 0) -> Path:
    name, maker, _ = {**FORMATS, **PIXEL_ONLY}[kind]
    if kind == "avif" and not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    path = tmp_path / name
    maker(path, seed)
    return path


def exiftool(path: Path, *args: str) -> None:
    assert EXIFTOOL is not None
    result = subprocess.run(
        [EXIFTOOL, "-overwrite_original", *args, str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "1 image files updated" in result.stdout, result.stdout + result.stderr


# --- metadata edits keep the hash ---------------------------------------------------------------------------


@needs_exiftool
@pytest.mark.parametrize("kind", list(FORMATS))
def test_metadata_edits_keep_the_hash(tmp_path: Path, kind: str) -> None:
    path = make(tmp_path, kind)
    original = path.read_bytes()
    expected = content_hash_file(path)
    assert expected.startswith(FORMATS[kind][2] + ":sha256:") and len(expected.split(":")[-1]) == 64
    assert content_hash(original, path=path) == expected

    exiftool(path, "-XMP-dc:Subject+=foo", "-Artist=bar", "-Rating=3")
    edited = path.read_bytes()
    assert edited != original
    assert content_hash_file(path) == expected

    exiftool(path, "-all=")
    assert path.read_bytes() != edited
    assert content_hash_file(path) == expected


@needs_exiftool
@pytest.mark.parametrize("kind", ["jpeg", "tiff"])
def test_orientation_edits_keep_the_hash(tmp_path: Path, kind: str) -> None:
    # Decision: the hash is of the image as stored; rotating it in a photo manager only edits a tag.
    path = make(tmp_path, kind)
    expected = content_hash_file(path)
    exiftool(path, "-n", "-Orientation=3")
    assert content_hash_file(path) == expected


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment up to the first SOS (a minimal walker for tests)."""
    out, pos = [], 2
    while data[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        out.append((data[pos + 1], pos, end))
        pos = end
    return out


def _pillow_pixels(data: bytes) -> bytes:
    """The decoded image, from a decoder that accepts every variant below with the same settings."""
    with Image.open(io.BytesIO(data)) as image:
        return image.tobytes()


def test_jpeg_layout_changes_that_keep_the_image(tmp_path: Path) -> None:
    data = jpeg_bytes(320, 240)
    expected = content_hash(data)
    eoi = data.rindex(b"\xff\xd9")
    com = b"\xff\xfe\x00\x0bmusiqd 1."  # a comment segment
    app = b"\xff\xeb\x00\x06ABCD"  # an APP11 segment (JUMBF-like)
    first_sos = data.index(b"\xff\xda")
    variants = {
        "motion-photo video after EOI": motion_photo_bytes(320, 240, video_bytes=50_000),
        "APP and COM segments added": data[:2] + app + com + data[2:],
        "fill bytes before markers": data[:first_sos] + b"\xff\xff\xff" + data[first_sos:eoi] + b"\xff\xff"
        + data[eoi:],
        "stray bytes between segments": data[:first_sos] + b"\x00\x00" + data[first_sos:],
        "APP segments removed": data[:2]
        + b"".join(
            data[start:end] for marker, start, end in _jpeg_segments(data) if not 0xE0 <= marker <= 0xEF
        )
        + data[first_sos:],
    }  # fmt: skip
    assert content_hash(variants.pop("motion-photo video after EOI")) == expected
    for what, variant in variants.items():
        assert variant != data
        assert _pillow_pixels(variant) == _pillow_pixels(data), what
        assert content_hash(variant) == expected, what


def test_png_idat_resplit_keeps_the_hash(tmp_path: Path) -> None:
    # Optimisers and some metadata tools re-split the compressed stream into differently sized chunks.
    data = make(tmp_path, "png").read_bytes()
    at = data.index(b"IDAT") - 4
    length = int.from_bytes(data[at : at + 4], "big")
    body = data[at + 8 : at + 8 + length]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    half = len(body) // 2
    resplit = data[:at] + chunk(b"IDAT", body[:half]) + chunk(b"IDAT", body[half:]) + data[at + 12 + length :]
    assert _pillow_pixels(resplit) == _pillow_pixels(data)
    assert content_hash(resplit) == content_hash(data)


# --- image changes change the hash --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*FORMATS, *PIXEL_ONLY])
def test_different_pixels_give_a_different_hash(tmp_path: Path, kind: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert content_hash_file(make(tmp_path / "a", kind)) != content_hash_file(make(tmp_path / "b", kind, 1))


def _flip(data: bytes, at: int) -> bytes:
    """Change one byte without creating or destroying a 0xFF (which would change the JPEG structure)."""
    value = data[at] ^ 0x01 if data[at] not in (0xFE, 0xFF) else data[at] ^ 0x02
    assert data[at] != 0xFF and value != 0xFF
    return data[:at] + bytes([value]) + data[at + 1 :]


def _inside(data: bytes, start: int, end: int) -> int:
    """An offset in the middle of data[start:end] whose byte and preceding byte are not 0xFF."""
    at = (start + end) // 2
    while data[at] == 0xFF or data[at - 1] == 0xFF:
        at += 1
    assert at < end
    return at


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-progressive", "jpeg-restart"])
def test_one_byte_in_the_scan_data_changes_the_hash(tmp_path: Path, kind: str) -> None:
    data = make(tmp_path, kind).read_bytes()
    # Each scan of a progressive file counts: flip a byte in the first and in the last scan.
    first = data.index(b"\xff\xda")
    first += 2 + int.from_bytes(data[first + 2 : first + 4], "big")
    last = data.rindex(b"\xff\xda")
    last += 2 + int.from_bytes(data[last + 2 : last + 4], "big")
    eoi = data.rindex(b"\xff\xd9")
    expected = content_hash(data)
    for start in {first, last}:
        end = data.index(b"\xff\xc4", start) if start != last else eoi
        assert content_hash(_flip(data, _inside(data, start, end))) != expected


def test_one_byte_in_png_webp_tiff_data_changes_the_hash(tmp_path: Path) -> None:
    png = make(tmp_path, "png").read_bytes()
    webp = make(tmp_path, "webp").read_bytes()
    tiff_path = make(tmp_path, "tiff")
    with Image.open(tiff_path) as image:
        assert isinstance(image, TiffImagePlugin.TiffImageFile)
        strip = int(image.tag_v2[273][0])  # StripOffsets
    tiff = tiff_path.read_bytes()
    for data, at in ((png, png.index(b"IDAT") + 100), (webp, webp.index(b"VP8 ") + 100), (tiff, strip + 7)):
        assert content_hash(_flip(data, at)) != content_hash(data)


# --- names and paths do not matter --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "tiff", "heic", "gif", "bmp", "dng"])
def test_same_content_under_another_name(tmp_path: Path, kind: str) -> None:
    path = make(tmp_path, kind)
    moved_dir = tmp_path / "2024" / "Urlaub Ω"
    moved_dir.mkdir(parents=True)
    moved = shutil.copy2(path, moved_dir / f"renamed{path.suffix.upper()}")
    assert content_hash_file(Path(moved)) == content_hash_file(path)
    assert content_hash(path.read_bytes()) == content_hash_file(path)  # bytes without any name


# --- broken input -------------------------------------------------------------------------------------------


def _decode_error(call: Callable[[], object]) -> str:
    with pytest.raises(DecodeError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", [*FORMATS, *PIXEL_ONLY])
def test_truncated_files(tmp_path: Path, kind: str) -> None:
    path = make(tmp_path, kind)
    data = path.read_bytes()
    cut = path.with_name("cut" + path.suffix)
    cut.write_bytes(data[: len(data) * 6 // 10])
    message = _decode_error(lambda: content_hash_file(cut))
    assert str(cut) in message
    _decode_error(lambda: content_hash(data[: len(data) // 3]))


def test_corrupt_structures(tmp_path: Path) -> None:
    jpeg = jpeg_bytes(160, 120)
    sos = jpeg.index(b"\xff\xda")
    png = make(tmp_path, "png").read_bytes()
    webp = make(tmp_path, "webp").read_bytes()
    cases = {
        "empty": b"",
        "JPEG without EOI": jpeg[: jpeg.rindex(b"\xff\xd9")],
        "JPEG segment past the end": jpeg[:sos] + b"\xff\xdb\xff\xf0" + b"\0" * 16,
        "JPEG with a zero segment length": jpeg[:2] + b"\xff\xe0\x00\x00" + jpeg[2:],
        "JPEG without frame header": b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9",
        "PNG without image data": png[:8] + png[8:33] + b"\0\0\0\0IEND\xaeB`\x82",
        "PNG not starting with IHDR": png[:8] + b"\0\0\0\0IEND\xaeB`\x82",
        "WebP chunk past the end": webp[:16] + b"\xff\xff\xff\x00" + webp[20:],
        "TIFF directory past the end": b"II*\0\xff\xff\0\0" + b"\0" * 64,
        "text": b"just some text, not a photo\n" * 10,
    }
    for what, data in cases.items():
        try:
            content_hash(data)
        except DecodeError as exc:
            assert "\n" not in str(exc), what
        else:
            pytest.fail(f"{what}: no DecodeError")


def test_unreadable_paths(tmp_path: Path) -> None:
    assert "not found" in _decode_error(lambda: content_hash_file(tmp_path / "missing.jpg"))
    assert "directory" in _decode_error(lambda: content_hash_file(tmp_path))
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in _decode_error(lambda: content_hash_file(tmp_path / "empty.jpg"))


# --- speed --------------------------------------------------------------------------------------------------


def test_hashing_a_large_jpeg_is_much_faster_than_decoding_it() -> None:
    # 12 MP with fine texture (upscaled scene plus noise), about 5 MB at quality 95.
    base = np.asarray(
        Image.fromarray(scene(1000, 750, seed=5)).resize((4000, 3000), Image.Resampling.BILINEAR)
    )
    noise = np.random.default_rng(5).integers(-6, 7, size=base.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()

    def best_of(call: Callable[[], object], runs: int) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    hashing = best_of(lambda: content_hash(data), 5)
    decoding = best_of(lambda: decode_image(data), 2)
    assert hashing * 4 < decoding, f"hash {hashing * 1000:.0f} ms, decode {decoding * 1000:.0f} ms"
