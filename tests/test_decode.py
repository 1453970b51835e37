"""Decoding photos: every format and pixel mode, orientation, reduced-size decoding, RAW, the official JPEG
decoder's exact pixels, and a one-line error (naming the file) for every way a file can be bad."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from imagegen import (
    dng_bytes,
    jpeg_bytes,
    make_dng,
    make_heic,
    make_image,
    make_jpeg,
    png16_bytes,
    scene,
    scene16,
    scene_float,
    tiff16_bytes,
)
from PIL import Image, ImageOps, features

from musiq_daemon.decode import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    DecodedImage,
    decode_image,
    from_array,
    from_pil,
    sniff_format,
)
from musiq_daemon.errors import DecodeError


def assert_ready(decoded: DecodedImage) -> None:
    """What every consumer relies on: (H, W, 3) uint8, C-contiguous, read-only."""
    px = decoded.pixels
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    assert px.flags.c_contiguous and not px.flags.writeable


def pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def decode_error(source: Path | bytes, **kwargs: object) -> str:
    """The message of the DecodeError that decoding ``source`` must raise; checks it is one line."""
    with pytest.raises(DecodeError) as info:
        decode_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and message == info.value.message
    if isinstance(source, Path):
        assert source.name in message
    return message


# --- JPEG ----------------------------------------------------------------------------------------------


def test_jpeg_full_decode(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "IMG_0001.JPG", 400, 300)
    decoded = decode_image(path)
    assert_ready(decoded)
    assert decoded.pixels.shape == (300, 400, 3)
    assert (decoded.format, decoded.source, decoded.stored_size) == ("JPEG", "full", (400, 300))
    assert (decoded.orientation, decoded.orientation_applied) == (1, False)  # camera EXIF, no orientation
    # Same content as Pillow's decode, which uses a different IDCT: about one level apart on average.
    assert mean_diff(decoded.pixels, pil_rgb(path)) < 1.5
    assert decode_image(path.read_bytes()).pixels.tobytes() == decoded.pixels.tobytes()
    assert decode_image(str(path)).pixels.tobytes() == decoded.pixels.tobytes()


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path: Path) -> None:
    decoded = decode_image(make_jpeg(tmp_path / "grey.jpg", 250, 180, mode="L"))
    assert_ready(decoded)
    assert decoded.pixels.shape == (180, 250, 3)
    assert (decoded.pixels == decoded.pixels[..., :1]).all()


@pytest.fixture(scope="module")
def tf_decode_jpeg() -> Callable[[bytes], np.ndarray]:
    tf = pytest.importorskip("tensorflow")

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(tf.io.decode_jpeg(data, channels=3).numpy())

    return decode


@pytest.mark.parametrize(
    ("width", "height", "kwargs"),
    [
        (333, 241, {"subsampling": "4:2:0"}),
        (300, 200, {"subsampling": "4:4:4", "quality": 95}),
        (259, 177, {"subsampling": "4:2:2", "quality": 75}),
        (203, 151, {"mode": "L"}),
        (17, 9, {"subsampling": "4:2:0"}),  # smaller than one MCU
        (321, 213, {"progressive": True}),
        (150, 101, {"mode": "CMYK", "subsampling": "4:4:4"}),  # Adobe (inverted) CMYK
    ],
    ids=["420-odd", "444", "422-odd", "grey-odd", "tiny", "progressive", "cmyk-adobe"],
)
def test_jpeg_is_bit_exact_with_the_official_decoder(
    tf_decode_jpeg: Callable[[bytes], np.ndarray], width: int, height: int, kwargs: dict[str, object]
) -> None:
    data = jpeg_bytes(width, height, **kwargs)  # type: ignore[arg-type]
    decoded = decode_image(data)
    assert decoded.source == "full"
    np.testing.assert_array_equal(decoded.pixels, tf_decode_jpeg(data))


def test_cmyk_jpeg_without_adobe_marker_matches_the_official_decoder(
    tf_decode_jpeg: Callable[[bytes], np.ndarray],
) -> None:
    data = jpeg_bytes(150, 101, mode="CMYK", subsampling="4:4:4", camera=False)
    at = data.index(b"Adobe") - 4  # the APP14 marker and its length precede the identifier
    assert data[at : at + 2] == b"\xff\xee"
    plain = data[:at] + data[at + 2 + int.from_bytes(data[at + 2 : at + 4], "big") :]
    np.testing.assert_array_equal(decode_image(plain).pixels, tf_decode_jpeg(plain))


def test_jpeg_refused_by_the_fast_decoder_falls_back_to_pillow(
    tf_decode_jpeg: Callable[[bytes], np.ndarray],
) -> None:
    # 4:2:0 CMYK: the fast decoder cannot classify this chroma sampling.
    data = jpeg_bytes(333, 221, mode="CMYK", subsampling="4:2:0")
    decoded = decode_image(data)
    assert_ready(decoded)
    assert decoded.source == "pillow-full"
    assert mean_diff(decoded.pixels, tf_decode_jpeg(data)) < 1.0  # accurate vs fast IDCT
    small = decode_image(data, min_long_side=100)
    assert small.source == "pillow-dct-1/2" and small.pixels.shape == (111, 167, 3)


@pytest.mark.parametrize(
    ("min_long_side", "source", "shape"),
    [
        (None, "full", (800, 1200, 3)),
        (1200, "full", (800, 1200, 3)),
        (5000, "full", (800, 1200, 3)),
        (1000, "full", (800, 1200, 3)),  # 1/2 would give 600 < 1000
        (600, "dct-1/2", (400, 600, 3)),
        (384, "dct-1/2", (400, 600, 3)),
        (224, "dct-1/4", (200, 300, 3)),
        (150, "dct-1/8", (100, 150, 3)),
        (20, "dct-1/8", (100, 150, 3)),  # libjpeg cannot go below 1/8
    ],
)
def test_dct_scaled_decode_keeps_the_long_side(
    tmp_path: Path, min_long_side: int | None, source: str, shape: tuple[int, int, int]
) -> None:
    path = make_jpeg(tmp_path / "wide.jpg", 1200, 800, quality=92)
    decoded = decode_image(path, min_long_side=min_long_side)
    assert_ready(decoded)
    assert (decoded.source, decoded.pixels.shape, decoded.stored_size) == (source, shape, (1200, 800))
    if min_long_side is not None:
        assert max(shape[:2]) >= min(min_long_side, 1200)
    # A reduced decode is the full image averaged down, not something else.
    full = Image.fromarray(decode_image(path).pixels)
    reference = np.asarray(full.resize((shape[1], shape[0]), Image.Resampling.BOX))
    assert mean_diff(decoded.pixels, reference) < 1.5


def test_dct_scaling_uses_the_long_side_of_portrait_and_odd_sizes(tmp_path: Path) -> None:
    decoded = decode_image(make_jpeg(tmp_path / "tall.jpg", 333, 1001), min_long_side=250)
    assert decoded.source == "dct-1/4"
    assert decoded.pixels.shape == (251, 84, 3)  # libjpeg rounds scaled sizes up
    rotated = decode_image(make_jpeg(tmp_path / "rot.jpg", 1001, 333, exif_orientation=6), min_long_side=250)
    assert rotated.pixels.shape == (251, 84, 3) and rotated.stored_size == (1001, 333)


def test_jpeg_with_harmless_warnings_or_trailing_data_decodes(tmp_path: Path) -> None:
    data = jpeg_bytes(320, 240)
    clean = decode_image(data).pixels
    # "2 extraneous bytes before marker 0xd9": common in camera files, accepted by the official decoder.
    stray = data[:-2] + b"\0\0" + data[-2:]
    np.testing.assert_array_equal(decode_image(stray).pixels, clean)
    # Data after EOI (motion photos append a video).
    motion = data + b"\0\0\0\x18ftypmp42" + bytes(200)
    np.testing.assert_array_equal(decode_image(motion).pixels, clean)


# --- orientation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose_png(tmp_path: Path, orientation: int) -> None:
    path = make_image(tmp_path / f"o{orientation}.png", 48, 30, exif_orientation=orientation)
    decoded = decode_image(path)
    with Image.open(path) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, want)
    assert decoded.orientation == orientation and decoded.stored_size == (48, 30)
    assert decoded.orientation_applied == (orientation != 1)
    unrotated = decode_image(path, apply_orientation=False)
    assert unrotated.pixels.shape == (30, 48, 3) and not unrotated.orientation_applied
    assert unrotated.orientation == orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose_jpeg(tmp_path: Path, orientation: int) -> None:
    path = make_jpeg(tmp_path / f"o{orientation}.jpg", 64, 40, exif_orientation=orientation)
    stored = decode_image(path, apply_orientation=False).pixels
    img = Image.fromarray(stored)
    img.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(img))
    decoded = decode_image(path)
    np.testing.assert_array_equal(decoded.pixels, want)
    assert (decoded.orientation, decoded.stored_size) == (orientation, (64, 40))


def test_invalid_orientation_value_is_ignored(tmp_path: Path) -> None:
    decoded = decode_image(make_jpeg(tmp_path / "o9.jpg", 64, 40, exif_orientation=9))
    assert (decoded.orientation, decoded.orientation_applied, decoded.pixels.shape) == (1, False, (40, 64, 3))


# --- Pillow formats and modes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode", "kwargs"),
    [
        ("rgb.png", "RGB", {}),
        ("palette.png", "P", {}),
        ("palette-transparent.png", "P", {"transparency": 0}),
        ("bilevel.png", "1", {}),
        ("grey.png", "L", {}),
        ("rgb.tif", "RGB", {}),
        ("lzw.tif", "RGB", {"compression": "tiff_lzw", "camera": False}),  # libtiff: no EXIF IFD
        ("cmyk.tif", "CMYK", {}),
        ("grey.tif", "L", {}),
        ("lossless.webp", "RGB", {"lossless": True}),
        ("photo.bmp", "RGB", {"camera": False}),
        ("anim.gif", "P", {"camera": False}),
    ],
)
def test_lossless_formats_decode_to_pillows_rgb(
    tmp_path: Path, name: str, mode: str, kwargs: dict[str, object]
) -> None:
    path = make_image(tmp_path / name, 120, 80, mode=mode, **kwargs)  # type: ignore[arg-type]
    decoded = decode_image(path)
    assert_ready(decoded)
    assert (
        decoded.format
        == {"png": "PNG", "tif": "TIFF", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}[name.rsplit(".", 1)[1]]
    )
    assert (decoded.source, decoded.stored_size) == ("full", (120, 80))
    np.testing.assert_array_equal(decoded.pixels, pil_rgb(path))


@pytest.mark.parametrize(("name", "mode"), [("rgba.png", "RGBA"), ("la.png", "LA"), ("rgba.webp", "RGBA")])
def test_alpha_is_dropped_keeping_the_stored_colour(tmp_path: Path, name: str, mode: str) -> None:
    kwargs = {"lossless": True} if name.endswith(".webp") else {}
    path = make_image(tmp_path / name, 120, 80, mode=mode, **kwargs)
    with Image.open(path) as img:
        stored = np.asarray(img)
    assert (stored[..., -1] == 0).any() and (
        stored[..., -1] == 255
    ).any()  # transparent corners, opaque centre
    colour = stored[..., :-1] if mode == "RGBA" else np.repeat(stored[..., :1], 3, axis=2)
    if name.endswith(".webp"):
        # The WebP encoder may rewrite the colour under fully transparent pixels; the rule is still "as
        # stored", so compare where the pixel is visible.
        visible = stored[..., -1] > 0
        np.testing.assert_array_equal(decode_image(path).pixels[visible], colour[visible])
    else:
        np.testing.assert_array_equal(decode_image(path).pixels, colour)


def test_sixteen_bit_grey_is_rounded(tmp_path: Path) -> None:
    big_endian = tmp_path / "grey16be.tif"
    grey = np.rint(scene_float(90, 60).mean(axis=2) * 65535).astype(">u2")
    Image.fromarray(grey).save(big_endian)
    for name in ("grey16.png", "grey16.tif", "grey16be.tif"):
        path = big_endian if name == "grey16be.tif" else make_image(tmp_path / name, 90, 60, mode="I;16")
        with Image.open(path) as img:
            assert img.mode.startswith("I;16")
            values = np.asarray(img).astype(np.float64)
        want = np.rint(values * 255 / 65535).astype(np.uint8)
        np.testing.assert_array_equal(decode_image(path).pixels, np.repeat(want[..., None], 3, axis=2))


def test_sixteen_bit_rounding_is_exact_over_the_whole_range() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    want = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(from_array(values).pixels[..., 0], want)


def test_sixteen_bit_colour_png_and_tiff_keep_the_high_byte(tmp_path: Path) -> None:
    rgb16 = scene16(90, 60)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png16_bytes(rgb16))
    decoded = decode_image(path)
    # Pillow reduces 16-bit colour to the high byte (as libpng's strip-16 does): at most one level off
    # the rounding rule.
    np.testing.assert_array_equal(decoded.pixels, (rgb16 >> 8).astype(np.uint8))
    rounded = np.rint(rgb16 / 257.0).astype(np.uint8)
    assert np.abs(decoded.pixels.astype(int) - rounded).max() <= 1
    tiff = tmp_path / "rgb16.tif"
    tiff.write_bytes(tiff16_bytes(rgb16))
    np.testing.assert_array_equal(decode_image(tiff).pixels, decoded.pixels)
    rgba = tmp_path / "rgba16.png"
    rgba.write_bytes(png16_bytes(np.concatenate([rgb16, np.full((60, 90, 1), 65535, np.uint16)], axis=2)))
    np.testing.assert_array_equal(decode_image(rgba).pixels, decoded.pixels)


def test_int32_and_float_tiffs(tmp_path: Path) -> None:
    grey = scene_float(90, 60).mean(axis=2)
    as_int = tmp_path / "int32.tif"
    Image.fromarray(np.rint(grey * 65535).astype(np.int32)).save(as_int)
    want = np.rint(np.rint(grey * 65535) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(as_int).pixels[..., 1], want)
    as_float = tmp_path / "float.tif"
    Image.fromarray(grey.astype(np.float32)).save(as_float)
    np.testing.assert_array_equal(decode_image(as_float).pixels[..., 2], np.rint(grey * 255).astype(np.uint8))
    out_of_range = tmp_path / "float255.tif"
    Image.fromarray((grey * 255).astype(np.float32)).save(out_of_range)
    assert "divide by 255" in decode_error(out_of_range)


def test_heic_round_trip_with_orientation(tmp_path: Path) -> None:
    original = scene(160, 120)
    decoded = decode_image(make_heic(tmp_path / "IMG_0001.HEIC", 160, 120))
    assert_ready(decoded)
    assert (decoded.format, decoded.stored_size, decoded.pixels.shape) == ("HEIF", (160, 120), (120, 160, 3))
    assert (decoded.orientation, decoded.orientation_applied) == (1, False)
    assert mean_diff(decoded.pixels, original) < 4.0
    # Phones store pixels sideways with a rotation in the container; the HEIF decoder always applies it.
    decoded = decode_image(make_heic(tmp_path / "IMG_0002.HEIC", 160, 120, exif_orientation=6))
    assert (decoded.orientation, decoded.orientation_applied) == (6, True)
    assert decoded.stored_size == (160, 120) and decoded.pixels.shape == (160, 120, 3)
    assert mean_diff(decoded.pixels, np.rot90(original, k=-1)) < 4.0


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF codec")
def test_avif_round_trip_with_orientation(tmp_path: Path) -> None:
    original = scene(160, 120)
    decoded = decode_image(make_image(tmp_path / "photo.avif", 160, 120, quality=90))
    assert_ready(decoded)
    assert (decoded.format, decoded.pixels.shape) == ("AVIF", (120, 160, 3))
    assert mean_diff(decoded.pixels, original) < 6.0
    decoded = decode_image(make_image(tmp_path / "turned.avif", 160, 120, exif_orientation=8, quality=90))
    assert (decoded.orientation, decoded.orientation_applied, decoded.stored_size) == (8, True, (160, 120))
    assert mean_diff(decoded.pixels, np.rot90(original, k=1)) < 6.0


def test_big_lossless_image_is_box_reduced_for_small_targets(tmp_path: Path) -> None:
    path = make_image(tmp_path / "pano.png", 1000, 700)
    full = decode_image(path)
    assert (full.source, full.pixels.shape) == ("full", (700, 1000, 3))
    reduced = decode_image(path, min_long_side=300)
    assert (reduced.source, reduced.pixels.shape, reduced.stored_size) == (
        "reduce-1/3",
        (234, 334, 3),
        (1000, 700),
    )
    reference = np.asarray(Image.fromarray(full.pixels).reduce(3))
    np.testing.assert_array_equal(reduced.pixels, reference)
    assert decode_image(path, min_long_side=600).source == "full"  # a factor below 2 gains nothing


# --- camera RAW ------------------------------------------------------------------------------------------


def test_raw_half_size_demosaic_looks_like_the_scene(tmp_path: Path) -> None:
    path = make_dng(tmp_path / "IMG_0001.DNG", 480, 320)
    decoded = decode_image(path)
    assert_ready(decoded)
    assert (decoded.format, decoded.source, decoded.stored_size) == (
        "RAW:DNG",
        "raw-half-demosaic",
        (480, 320),
    )
    assert decoded.pixels.shape == (160, 240, 3)
    luma = decoded.pixels.astype(np.float64).mean(axis=2)
    truth = np.asarray(Image.fromarray(scene(480, 320)).convert("L").reduce(2), np.float64)
    assert np.corrcoef(luma.ravel(), truth.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    ("min_long_side", "source", "shape"),
    [
        (None, "raw-half-demosaic", (240, 160, 3)),
        (200, "raw-preview", (200, 134, 3)),
        (100, "raw-preview-dct-1/2", (100, 67, 3)),
        (201, "raw-half-demosaic", (240, 160, 3)),  # the preview is too small; half size suffices
        (241, "raw-demosaic", (480, 320, 3)),  # even half size is too small
    ],
)
def test_raw_source_follows_the_size_needed(
    tmp_path: Path, min_long_side: int | None, source: str, shape: tuple[int, int, int]
) -> None:
    # Orientation 6 (portrait shot): the preview and the demosaic are both turned upright.
    path = make_dng(tmp_path / "portrait.dng", 480, 320, preview=(200, 134), orientation=6)
    decoded = decode_image(path, min_long_side=min_long_side)
    assert_ready(decoded)
    assert (decoded.source, decoded.pixels.shape, decoded.stored_size) == (source, shape, (480, 320))
    assert (decoded.orientation, decoded.orientation_applied) == (6, True)


def test_raw_orientation_can_be_left_alone_and_bytes_are_sniffed(tmp_path: Path) -> None:
    data = dng_bytes(480, 320, preview=(240, 160), orientation=6)
    decoded = decode_image(data, min_long_side=200, apply_orientation=False)  # no suffix: TIFF content
    assert (decoded.format, decoded.source, decoded.pixels.shape) == ("RAW:DNG", "raw-preview", (160, 240, 3))
    assert (decoded.orientation, decoded.orientation_applied) == (6, False)
    renamed = tmp_path / "IMG_0001.tif"  # a DNG under a TIFF name must not decode as its preview
    renamed.write_bytes(data)
    assert decode_image(renamed).format == "RAW:DNG"


def test_truncated_and_fake_raw_files_fail_cleanly(tmp_path: Path) -> None:
    data = dng_bytes(480, 320)
    cut = tmp_path / "IMG_0002.DNG"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in decode_error(cut)
    fake = tmp_path / "IMG_0003.NEF"
    fake.write_bytes(b"II*\0" + bytes(300))
    assert "NEF" in decode_error(fake)


# --- sniffing ------------------------------------------------------------------------------------------


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + bytes(16)


@pytest.mark.parametrize(
    ("head", "suffix", "expected"),
    [
        (b"\xff\xd8\xff\xe1" + bytes(60), ".jpg", "JPEG"),
        (b"\xff\xd8\xff\xe0" + bytes(60), ".cr2", "JPEG"),  # content wins over a wrong suffix
        (b"\x89PNG\r\n\x1a\n" + bytes(60), ".jpg", "PNG"),
        (b"GIF89a" + bytes(60), "", "GIF"),
        (b"RIFF\0\0\0\0WEBPVP8 " + bytes(60), "", "WEBP"),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(50), "", "BMP"),
        (b"BMW is a car maker" + bytes(60), ".bmp", None),
        (b"II*\0\x08\0\0\0" + bytes(60), ".tif", "TIFF"),
        (b"MM\0*\0\0\0\x08" + bytes(60), "", "TIFF"),
        (b"II*\0\x08\0\0\0" + bytes(60), ".NEF", "RAW:NEF"),
        (b"II*\0\x10\0\0\0CR\x02\0" + bytes(60), "", "RAW:CR2"),
        (b"IIRO" + bytes(60), "", "RAW:ORF"),
        (b"IIU\0" + bytes(60), ".rw2", "RAW:RW2"),
        (b"FUJIFILMCCD-RAW 0201" + bytes(60), "", "RAW:RAF"),
        (_ftyp(b"crx ", b"crx ", b"isom"), ".cr3", "RAW:CR3"),
        (_ftyp(b"heic", b"mif1", b"heic"), ".heic", "HEIF"),
        (_ftyp(b"mif1", b"mif1", b"heic"), "", "HEIF"),
        (_ftyp(b"avif", b"avif", b"mif1"), ".avif", "AVIF"),
        (_ftyp(b"mif1", b"avif", b"mif1"), "", "AVIF"),
        (_ftyp(b"isom", b"isom", b"mp42"), ".heic", None),
        (b"%PDF-1.7" + bytes(60), ".jpg", None),
        (b"some text" + bytes(60), ".x3f", "RAW:X3F"),  # no signature: the RAW decoder decides
    ],
)
def test_sniff_format(head: bytes, suffix: str, expected: str | None) -> None:
    assert sniff_format(head, suffix) == expected


def test_supported_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif", ".avif"} <= (
        SUPPORTED_SUFFIXES
    )
    assert {
        ".cr2",
        ".cr3",
        ".nef",
        ".arw",
        ".raf",
        ".orf",
        ".rw2",
        ".dng",
        ".x3f",
        ".rwl",
    } <= SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)


# --- errors ----------------------------------------------------------------------------------------------


def test_missing_directory_and_empty_files(tmp_path: Path) -> None:
    assert "not found" in decode_error(tmp_path / "gone.jpg")
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    assert "directory" in decode_error(folder)
    empty = tmp_path / "empty.jpg"
    empty.touch()
    assert "empty" in decode_error(empty)
    assert "0 bytes" in decode_error(b"")


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_jpeg(tmp_path / "private.jpg", 32, 32)
    if os.geteuid() == 0:  # root reads anything: simulate the refusal instead

        def refuse(self: Path, *args: object, **kwargs: object) -> object:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", refuse)
    else:
        path.chmod(0)
    assert "permission denied" in decode_error(path)


@pytest.mark.parametrize(
    "cut",
    [
        lambda d: d[: len(d) // 2],
        lambda d: d[: int(len(d) * 0.97)],
        lambda d: d[:-2],  # only the end-of-image marker missing
        lambda d: d[:200],  # inside the headers
        lambda d: d[: len(d) // 2] + bytes(len(d) - len(d) // 2),  # preallocated, half-copied file
    ],
    ids=["half", "almost", "no-eoi", "header", "zero-filled"],
)
def test_truncated_jpeg_is_an_error_not_grey(tmp_path: Path, cut: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "IMG_0004.JPG"
    path.write_bytes(cut(jpeg_bytes(320, 240)))
    assert "truncated" in decode_error(path)
    assert "truncated" in decode_error(path, min_long_side=50)  # the reduced-size decode too


def test_truncated_progressive_jpeg() -> None:
    data = jpeg_bytes(320, 240, progressive=True)
    assert "truncated" in decode_error(data[: len(data) * 2 // 3], name="prog.jpg")


@pytest.mark.parametrize("name", ["cut.bmp", "cut.gif", "cut.tif", "cut.webp", "cut.avif", "cut.heic"])
def test_truncated_files_of_other_formats(tmp_path: Path, name: str) -> None:
    if name.endswith(".avif") and not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    whole = tmp_path / ("whole." + name.rsplit(".", 1)[1])
    if name.endswith(".heic"):
        make_heic(whole, 200, 150)
    else:
        make_image(whole, 200, 150, mode="P" if name.endswith(".gif") else "RGB", camera=False)
    path = tmp_path / name
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    decode_error(path)


def test_corrupt_files(tmp_path: Path) -> None:
    data = jpeg_bytes(320, 240)
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    bad_scan = tmp_path / "bad-scan.jpg"
    bad_scan.write_bytes(data[:middle] + b"\xff\xd3" + data[middle + 2 :])  # a restart marker out of place
    assert "corrupt" in decode_error(bad_scan)
    sof = data.index(b"\xff\xc0")
    zero_size = tmp_path / "zero-size.jpg"
    zero_size.write_bytes(data[: sof + 5] + bytes(4) + data[sof + 9 :])
    assert "corrupt" in decode_error(zero_size)
    png = make_image(tmp_path / "photo.png", 200, 150).read_bytes()
    idat = png.index(b"IDAT")
    garbled = tmp_path / "garbled.png"
    garbled.write_bytes(png[: idat + 40] + bytes(range(256)) * 4 + png[idat + 40 + 1024 :])
    decode_error(garbled)
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png[: len(png) // 2])
    assert "truncated" in decode_error(cut_png)
    cut_webp = tmp_path / "cut.webp"
    cut_webp.write_bytes(make_image(tmp_path / "w.webp", 200, 150).read_bytes()[:-300])
    decode_error(cut_webp)


@pytest.mark.parametrize(
    ("name", "content", "hint"),
    [
        ("report.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        ("notes.jpg", b"Shopping list:\n- milk\n- bread\n", "text"),
        ("clip.heic", _ftyp(b"isom", b"isom", b"mp42") + bytes(100), "video"),
        ("design.png", b"8BPS\0\x01" + bytes(100), "Photoshop"),
    ],
)
def test_unsupported_formats(tmp_path: Path, name: str, content: bytes, hint: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    message = decode_error(path)
    assert "not a supported image format" in message and hint in message


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_MAX_PIXELS == 200_000_000
    jpeg = make_jpeg(tmp_path / "pano.jpg", 400, 300)
    png = make_image(tmp_path / "pano.png", 400, 300)
    dng = make_dng(tmp_path / "pano.dng", 400, 300)
    for path in (jpeg, png, dng):
        assert "max_pixels" in decode_error(path, max_pixels=100_000)
        assert decode_image(path, max_pixels=120_000).stored_size == (400, 300)
    # max_pixels is the limit that speaks: Pillow's own guard is raised to it when lower (never lowered)...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert decode_image(png).stored_size == (400, 300)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    decode_image(png, max_pixels=150_000)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    # ...and when it still fires first (above twice its limit), the message is musiqd's.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    message = decode_error(png, max_pixels=1_000)
    assert "image has 0.1 megapixels" in message and "MAX_IMAGE_PIXELS" not in message
    assert "more than max_pixels=1_000 allows; raise the max_pixels setting" in message


def test_messages_stay_on_one_line_for_odd_file_names(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(DecodeError) as info:
        decode_image(path)
    assert "\n" not in str(info.value) and "two\\nlines.jpg" in str(info.value)


# --- in-memory images ----------------------------------------------------------------------------------


def test_from_array_shapes_and_dtypes() -> None:
    rgb = scene(40, 30)
    for array, want in [
        (rgb, rgb),
        (np.concatenate([rgb, np.zeros((30, 40, 1), np.uint8)], axis=2), rgb),
        (rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=2)),
        (rgb[..., :1], np.repeat(rgb[..., :1], 3, axis=2)),
        (rgb.astype(np.uint16) * 257, rgb),
        (rgb.astype(np.float64) / 255.0, rgb),
        (rgb.astype(np.float32) / 255.0, rgb),
        (np.asfortranarray(rgb), rgb),
        (rgb[:, ::-1][:, ::-1], rgb),
    ]:
        decoded = from_array(array)
        assert_ready(decoded)
        np.testing.assert_array_equal(decoded.pixels, want)
        assert (decoded.format, decoded.source, decoded.stored_size) == ("ARRAY", "array", (40, 30))
        assert (decoded.orientation, decoded.orientation_applied) == (1, False)


def test_from_array_copies_and_rejects_bad_input() -> None:
    rgb = scene(40, 30)
    decoded = from_array(rgb)
    rgb[:] = 0
    assert decoded.pixels.any()
    bad_inputs: list[tuple[np.ndarray, str]] = [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.full((4, 4, 3), 200.0), "divide by 255"),
        (np.full((4, 4, 3), np.nan), "NaN"),
    ]
    for bad, words in bad_inputs:
        with pytest.raises(DecodeError, match=words) as info:
            from_array(bad)
        assert "\n" not in str(info.value)


def test_from_pil_modes_and_orientation(tmp_path: Path) -> None:
    rgb = scene(40, 30)
    assert from_pil(Image.fromarray(rgb)).pixels.tobytes() == rgb.tobytes()
    rgba = Image.fromarray(np.concatenate([rgb, np.zeros((30, 40, 1), np.uint8)], axis=2))
    np.testing.assert_array_equal(from_pil(rgba).pixels, rgb)
    grey16 = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(from_pil(grey16).pixels, np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(from_pil(Image.fromarray(rgb).convert("P")).pixels, pil_rgb_of(rgb))
    path = make_image(tmp_path / "turned.png", 40, 30, exif_orientation=6)
    with Image.open(path) as img:
        decoded = from_pil(img)
        assert (decoded.format, decoded.source) == ("PIL", "pil")
        assert (decoded.orientation, decoded.orientation_applied, decoded.stored_size) == (6, True, (40, 30))
        np.testing.assert_array_equal(decoded.pixels, decode_image(path).pixels)
        assert from_pil(img, apply_orientation=False).pixels.shape == (30, 40, 3)


def pil_rgb_of(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
