"""Realistic test photos, generated on the fly (no binary fixtures in the repository).

Decoders and metadata code must see what cameras produce: smooth gradients (sky), fine texture (noise,
foliage-like ripples), hard edges (a building, a sun disc), camera-style EXIF (Make, Model,
DateTimeOriginal, exposure) and, where asked, an EXIF orientation. Flat-colour images hide bugs: every
chroma subsampling, DCT-scaling and rotation error looks the same on a grey square.

Everything is deterministic for a given ``seed``. Sizes are (width, height), as in Pillow and EXIF.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]

TAKEN = datetime(2023, 6, 14, 17, 42, 9)

# EXIF tag numbers used below (the names are the EXIF specification's).
MAKE, MODEL, ORIENTATION, DATETIME, EXIF_IFD = 0x010F, 0x0110, 0x0112, 0x0132, 0x8769
EXPOSURE_TIME, F_NUMBER, ISO, DATETIME_ORIGINAL, FOCAL_LENGTH = 0x829A, 0x829D, 0x8827, 0x9003, 0x920A


def scene_float(width: int, height: int, *, seed: int = 0) -> npt.NDArray[np.float32]:
    """An outdoor-like scene in [0, 1], shape (height, width, 3), float32."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    horizon = 0.55 + 0.05 * np.sin(x * 7.0 + seed)
    sky = y < horizon
    # Sky: a vertical blue gradient that brightens towards the horizon and to the right.
    sky_r = 0.35 + 0.35 * y + 0.10 * x
    sky_g = 0.55 + 0.25 * y + 0.05 * x
    sky_b = 0.90 - 0.10 * y
    # Ground: greens/browns with ripples (texture at several frequencies).
    ripple = 0.06 * np.sin(x * 160.0 + y * 40.0) * np.sin(y * 230.0) + 0.04 * np.sin(x * 37.0 - y * 90.0)
    ground_r = 0.30 + 0.20 * (1.0 - y) + ripple
    ground_g = 0.42 + 0.15 * x + ripple
    ground_b = 0.18 + 0.05 * y + 0.5 * ripple
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = np.where(sky, sky_r, ground_r)
    img[..., 1] = np.where(sky, sky_g, ground_g)
    img[..., 2] = np.where(sky, sky_b, ground_b)
    # A building: hard vertical and horizontal edges, lit windows in a grid.
    bx0, bx1, by0 = int(0.15 * width), int(0.38 * width), int(0.25 * height)
    img[by0:, bx0:bx1] = (0.62, 0.58, 0.55)
    win = max(2, height // 40)
    for wy in range(by0 + win, height - win, 3 * win):
        for wx in range(bx0 + win, bx1 - win, 3 * win):
            img[wy : wy + win, wx : wx + win] = (0.95, 0.85, 0.45)
    # A sun disc with a soft halo (round edges, highlights close to clipping).
    cy, cx, radius = 0.2, 0.75, 0.07
    d = np.sqrt(((y - cy) * height) ** 2 + ((x - cx) * width) ** 2) / (radius * max(width, height))
    glow = np.clip(1.2 - d, 0.0, 1.0)[..., None]
    img += glow * (0.5, 0.45, 0.2)
    # Sensor noise: the fine texture that makes JPEG data and scores realistic.
    img += rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return img


def scene(width: int, height: int, *, seed: int = 0) -> U8:
    """:func:`scene_float` as RGB uint8."""
    out: U8 = np.rint(scene_float(width, height, seed=seed) * 255.0).astype(np.uint8)
    return out


def scene16(width: int, height: int, *, seed: int = 0) -> U16:
    """:func:`scene_float` as RGB uint16 (full 16-bit range, low bytes populated)."""
    out: U16 = np.rint(scene_float(width, height, seed=seed) * 65535.0).astype(np.uint16)
    return out


def camera_exif(
    *,
    orientation: int | None = None,
    make: str = "Canon",
    model: str = "Canon EOS R6",
    taken: datetime = TAKEN,
) -> Image.Exif:
    """EXIF as a camera writes it: IFD0 (Make, Model, DateTime[, Orientation]) and the Exif sub-IFD."""
    exif = Image.Exif()
    exif[MAKE] = make
    exif[MODEL] = model
    exif[DATETIME] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if orientation is not None:
        exif[ORIENTATION] = orientation
    sub = exif.get_ifd(EXIF_IFD)
    sub[DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
    sub[EXPOSURE_TIME] = 1 / 250
    sub[F_NUMBER] = 5.6
    sub[ISO] = 200
    sub[FOCAL_LENGTH] = 35.0
    return exif


def _pil_scene(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rgb = Image.fromarray(scene(width, height, seed=seed))
    return rgb if mode == "RGB" else rgb.convert(mode)


def jpeg_bytes(
    width: int,
    height: int,
    *,
    exif_orientation: int | None = None,
    quality: int = 90,
    subsampling: str = "4:2:0",
    mode: str = "RGB",
    progressive: bool = False,
    camera: bool = True,
    seed: int = 0,
) -> bytes:
    """A camera-like JPEG. ``mode`` "L" makes a grayscale JPEG, "CMYK" an Adobe CMYK JPEG."""
    img = _pil_scene(width, height, mode, seed)
    kwargs: dict[str, object] = {"quality": quality, "progressive": progressive}
    if mode != "L":
        kwargs["subsampling"] = subsampling
    if camera or exif_orientation is not None:
        kwargs["exif"] = camera_exif(orientation=exif_orientation).tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def make_jpeg(
    path: Path,
    width: int,
    height: int,
    *,
    exif_orientation: int | None = None,
    quality: int = 90,
    subsampling: str = "4:2:0",
    mode: str = "RGB",
    progressive: bool = False,
    camera: bool = True,
    seed: int = 0,
) -> Path:
    """Write :func:`jpeg_bytes` to ``path`` and return it."""
    path.write_bytes(
        jpeg_bytes(
            width,
            height,
            exif_orientation=exif_orientation,
            quality=quality,
            subsampling=subsampling,
            mode=mode,
            progressive=progressive,
            camera=camera,
            seed=seed,
        )
    )
    return path


def make_image(
    path: Path,
    width: int,
    height: int,
    *,
    mode: str = "RGB",
    exif_orientation: int | None = None,
    camera: bool = True,
    seed: int = 0,
    **save_kwargs: object,
) -> Path:
    """Write the scene with Pillow in the format given by ``path``'s suffix (PNG, TIFF, WebP, BMP, GIF,
    AVIF; for HEIC see :func:`make_heic`) and in ``mode`` (L, LA, P, RGBA, I;16, CMYK, ...).

    Alpha channels get a realistic mask: an opaque subject, a soft edge, fully transparent corners.
    ``save_kwargs`` go to ``Image.save`` (e.g. ``transparency=0`` for a palette image with a transparent
    index, ``compression="tiff_lzw"``).
    """
    img = _pil_scene(width, height, "RGB", seed)
    if mode in ("RGBA", "LA"):
        img = img.convert(mode[:-1])
        img.putalpha(Image.fromarray(_alpha_mask(width, height)))
    elif mode == "P":
        img = img.quantize(256)  # an adaptive palette, as GIF/PNG8 exporters make
    elif mode == "I;16":
        grey = scene_float(width, height, seed=seed).mean(axis=2)
        img = Image.fromarray(np.rint(grey * 65535.0).astype(np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    if camera or exif_orientation is not None:
        save_kwargs.setdefault("exif", camera_exif(orientation=exif_orientation).tobytes())
    img.save(path, **save_kwargs)  # type: ignore[arg-type]
    return path


def make_heic(
    path: Path,
    width: int,
    height: int,
    *,
    exif_orientation: int | None = None,
    quality: int = 92,
    seed: int = 0,
) -> Path:
    """A phone-like HEIC: the scene's pixels stored as they are, with ``exif_orientation`` both in EXIF
    and as the container's rotation (irot/imir), as phones write it. Written without registering the HEIF
    plugin in Pillow, so tests also see the decoder's lazy registration at work."""
    import pillow_heif

    img = _pil_scene(width, height, "RGB", seed)
    exif = camera_exif(orientation=exif_orientation, make="Apple", model="iPhone 13").tobytes()
    # EXIF passed to save() (not in img.info, which from_pillow would first apply to the pixels).
    pillow_heif.from_pillow(img).save(path, quality=quality, exif=exif)
    return path


def _alpha_mask(width: int, height: int) -> U8:
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    r = np.sqrt(x * x + y * y)
    out: U8 = np.rint(np.clip((1.1 - r) * 4.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def png16_bytes(pixels: U16) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count), written directly: Pillow cannot
    write 16-bit colour PNGs. Filter type 0 on every row keeps the writer tiny; readers must not care."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


# --- TIFF/DNG writer --------------------------------------------------------------------------------------
# Just enough TIFF to build a DNG that a RAW decoder accepts. Layout as cameras write it: header, IFDs and
# their values first, image data last (so a truncated file keeps its directory and loses pixel data).

_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_PACK = {_BYTE: "B", _ASCII: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "I", _SRATIONAL: "i"}

_Entry = tuple[int, int, Sequence[int] | bytes]
# An IFD is built from the final offsets of every IFD and data blob, known only after layout.
_IfdBuilder = Callable[[list[int], list[int]], list[_Entry]]


def _encode_ifd(entries: list[_Entry], at: int, next_ifd: int) -> bytes:
    entries = sorted(entries, key=lambda e: e[0])
    table, values = bytearray(), bytearray()
    values_at = at + 2 + 12 * len(entries) + 4
    for tag, kind, vals in entries:
        if isinstance(vals, bytes):
            raw, count = vals, len(vals)
        else:
            raw = struct.pack(f"<{len(vals)}{_PACK[kind]}", *vals)
            count = len(vals) // 2 if kind in (_RATIONAL, _SRATIONAL) else len(vals)
        if len(raw) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, kind, count, values_at + len(values))
            values += raw + b"\0" * (len(raw) % 2)
    return struct.pack("<H", len(entries)) + bytes(table) + struct.pack("<I", next_ifd) + bytes(values)


def _tiff(ifds: list[_IfdBuilder], blobs: list[bytes]) -> bytes:
    """Lay out ``ifds`` (the first is IFD0, the others are only reachable through SubIFDs) then ``blobs``."""
    ifd_at, blob_at = [0] * len(ifds), [0] * len(blobs)
    for _ in range(2):  # the first pass measures, the second writes with the real offsets
        out = bytearray(b"II*\0" + struct.pack("<I", 8))
        for i, build in enumerate(ifds):
            ifd_at[i] = len(out)
            out += _encode_ifd(build(ifd_at, blob_at), len(out), 0)
            out += b"\0" * (len(out) % 2)
        for i, blob in enumerate(blobs):
            blob_at[i] = len(out)
            out += blob + b"\0" * (len(blob) % 2)
    return bytes(out)


def tiff16_bytes(pixels: U16) -> bytes:
    """An uncompressed 16-bit RGB TIFF (as scanners and raw converters export), written directly: Pillow
    cannot write 16-bit colour TIFFs."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()

    def ifd0(ifd_at: list[int], blob_at: list[int]) -> list[_Entry]:
        return [
            (256, _LONG, [width]),
            (257, _LONG, [height]),
            (258, _SHORT, [16, 16, 16]),
            (259, _SHORT, [1]),
            (262, _SHORT, [2]),  # RGB
            (273, _LONG, [blob_at[0]]),
            (277, _SHORT, [3]),
            (278, _LONG, [height]),
            (279, _LONG, [len(data)]),
            (284, _SHORT, [1]),
        ]

    return _tiff([ifd0], [data])


def bayer_mosaic(width: int, height: int, *, seed: int = 0, black: int = 256, white: int = 4095) -> U16:
    """An RGGB Bayer mosaic of the scene, 12-bit values with a black level, as a sensor delivers it."""
    rgb = scene_float(width, height, seed=seed) ** 2.2  # sensors are linear
    gains = np.array([0.5, 1.0, 0.7], np.float32)  # raw colour casts: green-heavy as in real sensors
    mosaic = np.empty((height, width), np.float32)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0] * gains[0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1] * gains[1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1] * gains[1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2] * gains[2]
    out: U16 = np.rint(black + mosaic * (white - black)).clip(0, white).astype(np.uint16)
    return out


def dng_bytes(
    width: int,
    height: int,
    *,
    preview: tuple[int, int] | None = None,
    orientation: int = 1,
    seed: int = 0,
    black: int = 256,
    white: int = 4095,
) -> bytes:
    """A minimal, valid DNG 1.4: an uncompressed 16-bit RGGB mosaic with colour matrix and white balance.

    ``preview=(w, h)`` adds an embedded JPEG preview of that size in IFD0 (the raw data then moves to a
    SubIFD, as in camera DNGs); IFD0 carries Make/Model/Orientation like a camera file.
    """
    width, height = width & ~1, height & ~1  # whole 2x2 CFA quads
    mosaic = bayer_mosaic(width, height, seed=seed, black=black, white=white)
    blobs = [mosaic.tobytes()]
    # A plausible daylight matrix (XYZ -> camera, x10000) and as-shot neutral matching the colour casts.
    matrix = [9000, -3000, -800, -4200, 12000, 2300, -800, 1800, 6200]
    color_matrix = [v for m in matrix for v in (m, 10000)]

    def raw_entries(blob_at: list[int], subfile: int) -> list[_Entry]:
        return [
            (254, _LONG, [subfile]),
            (256, _LONG, [width]),
            (257, _LONG, [height]),
            (258, _SHORT, [16]),
            (259, _SHORT, [1]),
            (262, _SHORT, [32803]),  # CFA
            (273, _LONG, [blob_at[0]]),
            (277, _SHORT, [1]),
            (278, _LONG, [height]),
            (279, _LONG, [len(blobs[0])]),
            (284, _SHORT, [1]),
            (33421, _SHORT, [2, 2]),  # CFARepeatPatternDim
            (33422, _BYTE, [0, 1, 1, 2]),  # CFAPattern RGGB
            (50714, _SHORT, [black]),  # BlackLevel
            (50717, _SHORT, [white]),  # WhiteLevel
        ]

    camera: list[_Entry] = [
        (271, _ASCII, b"Testcam\0"),
        (272, _ASCII, b"Testcam D1\0"),
        (274, _SHORT, [orientation]),
        (306, _ASCII, TAKEN.strftime("%Y:%m:%d %H:%M:%S").encode() + b"\0"),
        (50706, _BYTE, [1, 4, 0, 0]),  # DNGVersion
        (50707, _BYTE, [1, 1, 0, 0]),  # DNGBackwardVersion
        (50708, _ASCII, b"Testcam D1\0"),  # UniqueCameraModel
        (50721, _SRATIONAL, color_matrix),  # ColorMatrix1
        (50728, _RATIONAL, [1, 2, 1, 1, 7, 10]),  # AsShotNeutral
        (50778, _SHORT, [21]),  # CalibrationIlluminant1 = D65
    ]
    if preview is None:
        return _tiff([lambda ifd_at, blob_at: camera + raw_entries(blob_at, 0)], blobs)
    pw, ph = preview
    blobs.append(jpeg_bytes(pw, ph, camera=False, seed=seed, quality=85))

    def ifd0(ifd_at: list[int], blob_at: list[int]) -> list[_Entry]:
        return [
            *camera,
            (254, _LONG, [1]),  # reduced-resolution image
            (256, _LONG, [pw]),
            (257, _LONG, [ph]),
            (258, _SHORT, [8, 8, 8]),
            (259, _SHORT, [7]),  # JPEG
            (262, _SHORT, [6]),  # YCbCr
            (273, _LONG, [blob_at[1]]),
            (277, _SHORT, [3]),
            (278, _LONG, [ph]),
            (279, _LONG, [len(blobs[1])]),
            (284, _SHORT, [1]),
            (330, _LONG, [ifd_at[1]]),  # SubIFDs: the raw image
        ]

    return _tiff([ifd0, lambda ifd_at, blob_at: raw_entries(blob_at, 0)], blobs)


def make_dng(
    path: Path,
    width: int,
    height: int,
    *,
    preview: tuple[int, int] | None = None,
    orientation: int = 1,
    seed: int = 0,
) -> Path:
    """Write :func:`dng_bytes` to ``path`` and return it."""
    path.write_bytes(dng_bytes(width, height, preview=preview, orientation=orientation, seed=seed))
    return path


# --- large files ------------------------------------------------------------------------------------------


def motion_photo_bytes(width: int, height: int, *, video_bytes: int, seed: int = 0) -> bytes:
    """A phone "motion photo": a camera JPEG followed, after its EOI marker, by a video clip of about
    ``video_bytes`` (an MP4 ``ftyp`` box and an ``mdat`` box of incompressible data, as phones append it).
    Big files with a real, decodable photo at the front, cheap to generate."""
    photo = jpeg_bytes(width, height, seed=seed)
    payload = np.random.default_rng(seed).bytes(max(0, video_bytes - 32))
    ftyp = struct.pack(">I", 24) + b"ftypmp42" + struct.pack(">I", 0) + b"isommp42"
    mdat = struct.pack(">I", 8 + len(payload)) + b"mdat" + payload
    return photo + ftyp + mdat


def large_tiff16_bytes(target_bytes: int, *, seed: int = 0) -> bytes:
    """An uncompressed 16-bit RGB TIFF (:func:`tiff16_bytes`) of about ``target_bytes``, as a scanner or a
    raw converter exports it. The scene is rendered at a small size and tiled, which keeps generating a
    25 MB file well under a second."""
    side = max(2, int((target_bytes / 6) ** 0.5))
    tile = scene16(min(side, 512), min(side, 512), seed=seed)
    reps = -(-side // tile.shape[0])
    pixels = np.tile(tile, (reps, reps, 1))[:side, :side]
    return tiff16_bytes(np.ascontiguousarray(pixels))


# --- photos as they arrive after a camera and a photo manager (metadata tests) ----------------------------

GPS_IFD = 0x8825
MAKER_NOTE = 0x927C
USER_KEYWORDS = ("Paris", "holiday", "Eiffel")
USER_HIERARCHY = ("Places|France|Paris", "holiday", "Places|France|Eiffel")


def nikon_makernote() -> bytes:
    """A small Nikon type-3 maker note: "Nikon" header, then its own TIFF header and IFD, with offsets
    relative to that header (which is what makes it survive relocation, as in real files)."""
    entries = [
        (0x0001, 7, 4, b"0210"),  # MakerNoteVersion
        (0x0002, 3, 2, struct.pack(">HH", 0, 200)),  # ISO
        (0x0004, 2, 8, b"FINE   \0"),  # Quality
        (0x0005, 2, 8, b"AUTO   \0"),  # WhiteBalance
    ]
    values_at = 8 + 2 + 12 * len(entries) + 4
    table, values = b"", b""
    for tag, kind, count, raw in entries:
        if len(raw) <= 4:
            table += struct.pack(">HHI", tag, kind, count) + raw.ljust(4, b"\0")
        else:
            table += struct.pack(">HHII", tag, kind, count, values_at + len(values))
            values += raw
    ifd = struct.pack(">H", len(entries)) + table + b"\0\0\0\0" + values
    return b"Nikon\0\x02\x10\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd


def photo_exif() -> Image.Exif:
    """:func:`camera_exif` of a Nikon with GPS (Paris) and a maker note."""
    from PIL.TiffImagePlugin import IFDRational

    exif = camera_exif(make="NIKON CORPORATION", model="NIKON Z 6")
    exif.get_ifd(EXIF_IFD)[MAKER_NOTE] = nikon_makernote()
    gps = exif.get_ifd(GPS_IFD)
    gps[0] = b"\x02\x03\x00\x00"  # GPSVersionID
    gps[1], gps[2] = "N", (IFDRational(48, 1), IFDRational(51, 1), IFDRational(2397, 100))
    gps[3], gps[4] = "E", (IFDRational(2, 1), IFDRational(17, 1), IFDRational(4012, 100))
    return exif


def srgb_icc() -> bytes:
    """An sRGB ICC profile, as editors embed it."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exiftool(*args: str | Path) -> str:
    """Run exiftool (the independent reference for metadata) and return its output."""
    import subprocess

    done = subprocess.run(["exiftool", *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exiftool {args}: {done.stderr.strip()}")
    return done.stdout


def make_photo(
    path: Path,
    width: int,
    height: int,
    *,
    rating: int | None = 2,
    keywords: Sequence[str] = USER_KEYWORDS,
    hierarchy: Sequence[str] = USER_HIERARCHY,
    extra_xmp: Sequence[str] = (),
    seed: int = 0,
    pixels: U8 | None = None,
    **save_kwargs: object,
) -> Path:
    """A photo in the format of ``path``'s suffix (JPEG, TIFF, PNG, WebP) as it looks after a camera and a
    photo manager: camera EXIF with GPS and a maker note, an sRGB ICC profile, an EXIF thumbnail (not in
    TIFF, where a thumbnail is a second page), XMP keywords (flat and hierarchical) and, unless ``rating``
    is None, the user's stars in XMP and EXIF. ``extra_xmp``: more exiftool assignments
    (``-XMP-digiKam:TagsList=...``). ``pixels`` (RGB, ``height`` x ``width``) replaces the scene, e.g.
    for large files that are cheaper to make by tiling."""
    img = Image.fromarray(scene(width, height, seed=seed) if pixels is None else pixels)
    img.save(path, exif=photo_exif().tobytes(), icc_profile=srgb_icc(), **save_kwargs)  # type: ignore[arg-type]
    args: list[str | Path] = ["-q", "-overwrite_original"]
    thumb = None
    if path.suffix.lower() not in (".tif", ".tiff"):
        thumb = path.with_name(path.stem + ".thumb.jpg")
        Image.fromarray(scene(160, max(1, 160 * height // width), seed=seed)).save(thumb, quality=80)
        args.append(f"-ThumbnailImage<={thumb}")
    args += [f"-XMP-dc:Subject={k}" for k in keywords]
    args += [f"-XMP-lr:HierarchicalSubject={k}" for k in hierarchy]
    if rating is not None:
        percent = {0: 0, 1: 1, 2: 25, 3: 50, 4: 75, 5: 99}.get(rating, 0)
        args += [f"-XMP-xmp:Rating={rating}", f"-IFD0:Rating={rating}", f"-IFD0:RatingPercent={percent}"]
    exiftool(*args, *extra_xmp, path)
    if thumb is not None:
        thumb.unlink()
    return path


def lightroom_sidecar(*, rating: int = 3) -> str:
    """An ``IMG_1234.xmp`` as Lightroom Classic writes it for a RAW: camera data, develop settings (crs:*,
    with a tone curve and a look struct), history, a two-language title, keywords and stars."""
    return f"""<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:aux="http://ns.adobe.com/exif/1.0/aux/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   tiff:Make="Canon" tiff:Model="Canon EOS R6" tiff:Orientation="1"
   exif:ExifVersion="0231" exif:ExposureTime="1/250" exif:FNumber="56/10"
   exif:DateTimeOriginal="2023-06-14T17:42:09.12+02:00" exif:FocalLength="350/10"
   xmp:ModifyDate="2023-06-20T10:00:00+02:00" xmp:CreateDate="2023-06-14T17:42:09.12+02:00"
   xmp:MetadataDate="2023-06-20T10:00:00+02:00" xmp:CreatorTool="Canon EOS R6" xmp:Rating="{rating}"
   xmp:Label="Red" aux:SerialNumber="012345678901" aux:Lens="RF24-105mm F4 L IS USM"
   photoshop:DateCreated="2023-06-14T17:42:09.12+02:00"
   xmpMM:DocumentID="xmp.did:1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
   xmpMM:InstanceID="xmp.iid:1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
   crs:Version="15.4" crs:ProcessVersion="11.0" crs:WhiteBalance="As Shot" crs:Exposure2012="+0.35"
   crs:Contrast2012="+12" crs:Highlights2012="-45" crs:Shadows2012="+30" crs:Clarity2012="+10"
   crs:Vibrance="+15" crs:ToneCurveName2012="Linear" crs:CameraProfile="Adobe Standard"
   crs:HasSettings="True" crs:HasCrop="True" crs:CropTop="0.05" crs:CropLeft="0.04"
   crs:CropBottom="0.95" crs:CropRight="0.96" crs:CropAngle="1.2">
   <exif:ISOSpeedRatings><rdf:Seq><rdf:li>200</rdf:li></rdf:Seq></exif:ISOSpeedRatings>
   <exif:Flash rdf:parseType="Resource">
    <exif:Fired>False</exif:Fired><exif:Return>0</exif:Return><exif:Mode>2</exif:Mode>
   </exif:Flash>
   <dc:title><rdf:Alt>
    <rdf:li xml:lang="x-default">Sunset over the Seine</rdf:li>
    <rdf:li xml:lang="fr-FR">Coucher de soleil sur la Seine</rdf:li>
   </rdf:Alt></dc:title>
   <dc:subject><rdf:Bag>{"".join(f"<rdf:li>{k}</rdf:li>" for k in USER_KEYWORDS)}</rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag>{"".join(f"<rdf:li>{k}</rdf:li>" for k in USER_HIERARCHY)}</rdf:Bag>
   </lr:hierarchicalSubject>
   <xmpMM:History><rdf:Seq>
    <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
     stEvt:when="2023-06-20T10:00:00+02:00" stEvt:softwareAgent="Adobe Photoshop Lightroom Classic 12.4"
     stEvt:changed="/metadata"/>
   </rdf:Seq></xmpMM:History>
   <crs:ToneCurvePV2012><rdf:Seq>
    <rdf:li>0, 0</rdf:li><rdf:li>64, 60</rdf:li><rdf:li>255, 255</rdf:li>
   </rdf:Seq></crs:ToneCurvePV2012>
   <crs:Look>
    <rdf:Description crs:Name="Adobe Color" crs:Amount="1" crs:UUID="B952C231111CD8E0ECCF14B86BAA7077">
    <crs:Group><rdf:Alt><rdf:li xml:lang="x-default">Profiles</rdf:li></rdf:Alt></crs:Group>
    <crs:Parameters><rdf:Description crs:Version="15.4" crs:ConvertToGrayscale="False"/></crs:Parameters>
   </rdf:Description></crs:Look>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def darktable_sidecar(raw_name: str, *, rating: int = 1) -> str:
    """An ``IMG_1234.CR2.xmp`` as darktable writes it: its history stack (module parameters), hashes and
    tags (darktable adds ``darktable|...`` tags of its own)."""
    history = "".join(
        f"""
     <rdf:li darktable:num="{num}" darktable:operation="{op}" darktable:enabled="1"
      darktable:modversion="{version}" darktable:params="{params}" darktable:multi_name=""
      darktable:multi_priority="0" darktable:blendop_version="11"
      darktable:blendop_params="gz08eJxjYGBgYAFiCQYYOOHEgAYY0QVwggZ7CB6pfNoAAGHWBBc="/>"""
        for num, (op, version, params) in enumerate(
            [
                ("rawprepare", 1, "0000000000000000000000000000000000000000"),
                ("exposure", 6, "00000000000080b90000803f00004842000080c0"),
                ("filmicrgb", 6, "gz11eJxjZGBgkGAAgRNODGiAEV0AJ2iwh+CRyqcNAAA="),
            ]
        )
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmlns:darktable="http://darktable.sf.net/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   exif:DateTimeOriginal="2023:06:14 17:42:09.120" xmp:Rating="{rating}" xmpMM:DerivedFrom="{raw_name}"
   darktable:import_timestamp="63822345678000000" darktable:change_timestamp="63822345999000000"
   darktable:export_timestamp="-1" darktable:print_timestamp="-1" darktable:xmp_version="5"
   darktable:raw_params="0" darktable:auto_presets_applied="1" darktable:workflow="scene-referred (filmic)"
   darktable:history_end="3" darktable:iop_order_version="4"
   darktable:history_basic_hash="c9d1b6ad0f4a1e6b3b5d6a7f8e9c0b1a"
   darktable:history_current_hash="0f4a1e6b3b5d6a7f8e9c0b1ac9d1b6ad">
   <darktable:masks_history><rdf:Seq/></darktable:masks_history>
   <darktable:history><rdf:Seq>{history}
   </rdf:Seq></darktable:history>
   <dc:subject><rdf:Bag><rdf:li>birds</rdf:li><rdf:li>darktable|format|cr2</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag>
    <rdf:li>animals|birds</rdf:li><rdf:li>darktable|format|cr2</rdf:li>
   </rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
