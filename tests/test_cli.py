"""The `musiqd` command end to end, as a real subprocess: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from musiq_daemon.model.verify import sample_photos

MUSIQD = [sys.executable, "-m", "musiq_daemon"]


def run(args: list[str], env: dict[str, str], check_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    images = sample_photos(3, size=(240, 320))
    Image.fromarray(images[0]).save(folder / "a.jpg", quality=92)
    Image.fromarray(images[1]).save(folder / "sub" / "b.png")
    Image.fromarray(images[2]).save(folder / "sub" / "ünï cödé [1].jpg", quality=80)
    (folder / "notes.txt").write_text("not a photo", encoding="utf-8")
    return folder


def test_version_and_help(env: dict[str, str]) -> None:
    assert run(["--version"], env).stdout.startswith("musiqd ")
    out = run(["--help"], env).stdout
    assert "models" in out and "score" in out and "Exit codes" in out


def test_models_list(env: dict[str, str]) -> None:
    rows = json.loads(run(["models", "list", "--json"], env).stdout)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"koniq", "spaq", "paq2piq", "ava"}
    assert by_id["koniq"]["default"] is True
    assert {i["variant"] for i in by_id["koniq"]["installed"]} == {"fp32", "dynamic-int8"}
    assert by_id["spaq"]["installed"] == []
    table = run(["models", "list"], env).stdout
    assert "koniq" in table and "dynamic-int8" in table


def test_score_folder_json_writes_nothing(env: dict[str, str], photos: Path) -> None:
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    result = run(["score", str(photos), "--json", "--variant", "fp32", "--device", "cpu"], env)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a.jpg", "b.png", "ünï cödé [1].jpg"]
    for r in records:
        assert 1.0 <= r["score"] <= 5.0
        assert r["score"] == pytest.approx(1 + 4 * r["raw"] / 100) or r["score"] in (1.0, 5.0)
        assert r["model_id"] == "koniq" and r["variant"] == "fp32" and r["device"] == "cpu"
        assert r["resolution_policy"] == "max_side=1024"
        assert r["num_tokens"] == 49 + 144 + 80  # 240x320 -> 8 x 10 native patches
        assert len(r["model_version"]) == 12
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    assert after == before


def test_score_table_and_failures(env: dict[str, str], photos: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    result = run(["score", str(photos)], env, check_rc=1)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["score", "raw"]
    assert len(lines) == 4  # header + three good photos
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "broken.jpg" in errors[0]
    assert errors[1].startswith("musiqd: 3 scored, 0 skipped") and " 1 failed in " in errors[1]


@pytest.mark.parametrize(
    ("args", "rc", "text"),
    [
        (["score", "/nonexistent/photo.jpg"], 2, "does not exist"),
        (["score", "--model", "nope", "."], 2, 'unknown model "nope"'),
        (["score", "--model", "spaq", "."], 3, "musiqd models fetch spaq"),
        (["score", "--device", "tpu", "."], 2, 'device: unknown value "tpu"'),
        (["score", "--resolution", "huge", "."], 2, "huge"),
        (["models", "convert", "--checkpoint", "/nonexistent/koniq_ckpt.npz"], 3, "koniq_ckpt.npz"),
        (["models", "convert", "--checkpoint", "weird.npz"], 2, "pass --id"),
        (["models", "verify", "spaq"], 3, "not installed"),
    ],
)
def test_user_errors_are_one_line(
    env: dict[str, str], photos: Path, args: list[str], rc: int, text: str
) -> None:
    os.chdir(photos)
    result = run(args, env, check_rc=rc)
    err = result.stderr.strip()
    assert err.startswith("musiqd: error: ") and text in err and "\n" not in err, err


def test_fetch_offline_fails_clearly(env: dict[str, str]) -> None:
    result = run(["models", "fetch", "koniq", "--url", "http://127.0.0.1:9/koniq_ckpt.npz"], env, check_rc=7)
    assert "models convert --checkpoint" in result.stderr


def test_convert_and_verify(tmp_path: Path, env: dict[str, str], tiny_checkpoints: dict[str, Path]) -> None:
    env = {**env, "MUSIQD_MODEL_DIR": str(tmp_path / "fresh")}
    out = run(
        ["models", "convert", "--checkpoint", str(tiny_checkpoints["ava"]), "--variant", "fp32"], env
    ).stdout
    assert "installed ava fp32" in out
    assert (tmp_path / "fresh" / "ava" / "fp32.tflite").is_file()
    report = run(["models", "verify", "ava"], env).stdout
    assert "fp32" in report and "yes" in report
    assert "generated images" in report and "scores on 1-10" in report


def test_verify_on_a_folder_of_photos(env: dict[str, str], photos: Path, tmp_path: Path) -> None:
    report = run(["models", "verify", "koniq", str(photos), "--variant", "dynamic-int8"], env).stdout
    count = sum(1 for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".tif", ".webp"))
    assert f"on {count} photos" in report and "scores on 1-5" in report
    assert "dynamic-int8" in report and "0.0300" in report  # the allowed worst difference on 1-5
    missing = run(["models", "verify", "koniq", "--checkpoint", str(tmp_path / "gone.npz")], env, check_rc=2)
    assert "gone.npz does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_database_url_variable_takes_a_plain_path_like_db(env: dict[str, str], tmp_path: Path) -> None:
    """$MUSIQD_DATABASE_URL accepts what --db accepts: a SQLAlchemy URL or a file path."""
    index = tmp_path / "elsewhere" / "index.sqlite3"
    run(["db", "upgrade"], {**env, "MUSIQD_DATABASE_URL": str(index)})
    assert index.is_file()
    result = run(["query", "--min", "1"], {**env, "MUSIQD_DATABASE_URL": str(index)})
    assert "invalid database URL" not in result.stderr and "0 photos" in result.stderr
    run(["query", "--min", "1"], {**env, "MUSIQD_DATABASE_URL": f"sqlite:///{index}"})


@pytest.mark.parametrize("how", ["--db", "MUSIQD_DATABASE_URL"])
def test_query_on_a_mistyped_index_creates_nothing(env: dict[str, str], tmp_path: Path, how: str) -> None:
    """A query reads an index; a path that holds none is an error, not a new empty index and folders."""
    typo = tmp_path / "photso" / "index.sqlite3"
    if how == "--db":
        result = run(["query", "--min", "4", "--db", str(typo)], env, check_rc=8)
    else:
        result = run(["query", "--min", "4"], {**env, "MUSIQD_DATABASE_URL": str(typo)}, check_rc=8)
    assert result.stderr.startswith(f"musiqd: error: no index at {typo}: ")
    assert "--db" in result.stderr and "Traceback" not in result.stderr
    assert not typo.parent.exists()


def test_cli_and_library_agree(env: dict[str, str], photos: Path, models_root: Path) -> None:
    from musiq_daemon.api import Scorer

    record = Scorer("koniq", "fp32", device="cpu", models_root=models_root).score(photos / "sub" / "b.png")
    cli = json.loads(run(["score", str(photos / "sub" / "b.png"), "--json", "--variant", "fp32"], env).stdout)
    assert cli["raw"] == pytest.approx(record.raw, rel=1e-6)
    assert np.isfinite(record.raw)


def test_score_write_and_index(env: dict[str, str], photos: Path, tmp_path: Path) -> None:
    """`score --write` puts the score into the photo (read back by exiftool) and into the index."""
    import shutil

    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (.ci/run installs it)")
    photo = photos / "a.jpg"
    db = tmp_path / "index.sqlite3"
    first = json.loads(
        run(["score", str(photo), "--json", "--write", "--variant", "fp32", "--db", str(db)], env).stdout
    )
    assert first["written"]["target"] == "embedded" and first["written"]["changed"] is True
    tags = json.loads(
        subprocess.run(["exiftool", "-j", "-G1", "-XMP-musiqd:all", "-XMP-xmp:Rating", str(photo)],
                       capture_output=True, text=True, check=True).stdout
    )[0]  # fmt: skip
    assert float(tags["XMP-musiqd:KoniqScore"]) == pytest.approx(first["score"], abs=5e-4)
    assert tags["XMP-musiqd:KoniqModelVersion"] == first["model_version"]
    assert tags["XMP-xmp:Rating"] == first["written"]["rating"]
    stat = photo.stat()
    # A second run skips the photo: the index has its score and the file is as musiqd left it.
    skipped = run(["score", str(photo), "--json", "--write", "--variant", "fp32", "--db", str(db)], env)
    assert skipped.stdout == "" and "0 scored, 1 skipped" in skipped.stderr
    again = json.loads(
        run(
            ["score", str(photo), "--json", "--write", "--force", "--variant", "fp32", "--db", str(db)], env
        ).stdout
    )
    assert again["written"]["changed"] is False  # idempotent: the photo is not rewritten
    assert (photo.stat().st_mtime_ns, photo.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    rows = json.loads(run(["query", "--format", "json", "--db", str(db)], env).stdout)
    assert [(r["path"], r["score"]) for r in rows] == [(str(photo), pytest.approx(first["score"]))]
    assert rows[0]["content_hash"].startswith("jpeg-scan:sha256:")


def test_score_no_index(env: dict[str, str], photos: Path, tmp_path: Path) -> None:
    run(["score", str(photos / "a.jpg"), "--no-index", "--db", str(tmp_path / "none.sqlite3")], env)
    assert not (tmp_path / "none.sqlite3").exists()
    run(["score", str(photos / "a.jpg"), "--variant", "fp32"], env)  # default index in the data dir
    assert (Path(env["MUSIQD_DATA_DIR"]) / "index.sqlite3").is_file()


def test_score_write_reports_a_sidecar_fallback_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    """A photo whose XMP holds two different ratings: left untouched, the score goes to a sidecar, and
    stderr has exactly one musiqd line that names the photo (JSON carries the same note)."""
    import metadata_corpus

    photo = metadata_corpus.build_photo(tmp_path, "panasonic_digikam_conflict").path
    content = photo.read_bytes()
    result = run(["score", str(photo), "--json", "--write", "--no-index"], env)
    written = json.loads(result.stdout)["written"]
    assert written["target"] == "sidecar" and written["path"] == str(photo) + ".xmp"
    assert photo.read_bytes() == content and Path(written["path"]).is_file()
    line, summary = result.stderr.splitlines()
    assert summary.startswith("musiqd: 1 scored, 0 skipped")
    assert line.startswith(f"musiqd: {photo}: its XMP holds xmp:Rating twice with different values")
    assert written["notes"] == [line.removeprefix("musiqd: ")]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["query", "--min", "abc"], ["--min", "musiqd query --help"]),
        (["score", "--threads", "0", "."], ["--threads", "musiqd score --help"]),
        (["query", "--no-such-option"], ["--no-such-option", "musiqd query --help"]),
        (["--no-such-option"], ["--no-such-option", "musiqd --help"]),
        (["no-such-command"], ["no-such-command", "musiqd --help"]),
    ],
)
def test_usage_errors_are_one_line(env: dict[str, str], args: list[str], names: list[str]) -> None:
    """The option parser's errors look like every other: one line with the fix, exit code 2 (click's)."""
    result = run(args, env, check_rc=2)
    (line,) = result.stderr.splitlines()
    assert line.startswith("musiqd: error: ") and result.stdout == "", result.stderr
    # The command is named as the user ran it (here `python -m musiq_daemon`).
    line = line.replace("python -m musiq_daemon", "musiqd")
    assert all(name in line for name in names), line


def test_help_speaks_to_users(env: dict[str, str]) -> None:
    out = run(["--help"], env).stdout
    text = " ".join(out.split()).lower()
    assert "score photos" in text and "thin:" not in text  # what musiqd does, not how the module is built
    commands = out.split("Commands:", 1)[1]
    for command in ("score", "watch", "query", "status", "models"):
        assert f"\n  {command} " in commands, command


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of the test's own (root only), unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that uses the disk's free space up to ``leave`` bytes."""
    info = os.statvfs(disk)
    filler = disk / "filler.bin"
    filler.write_bytes(b"\0" * max(info.f_bavail * info.f_frsize - leave, 0))
    return filler


def test_score_write_on_a_full_disk_stops_with_exit_11_then_resumes(
    env: dict[str, str], small_disk: Path
) -> None:
    from imagegen import jpeg_bytes

    photos = [small_disk / f"IMG_{i}.jpg" for i in range(3)]
    for i, path in enumerate(photos):
        path.write_bytes(jpeg_bytes(1200, 800, seed=40 + i))
    originals = {path: path.read_bytes() for path in photos}
    filler = fill(small_disk, leave=16_000)
    index = str(small_disk.parent / "index.sqlite3")
    full = run(["score", "--write", "--db", index, *map(str, photos)], env, check_rc=11)
    assert "no space left on the device" in full.stderr and "Traceback" not in full.stderr
    assert "musiqd: error: the disk is full: " in full.stderr and "free some space" in full.stderr
    assert {path: path.read_bytes() for path in photos} == originals  # nothing half-written
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".musiqd-tmp-")]
    filler.unlink()
    again = run(["score", "--write", "--db", index, *map(str, photos)], env)
    # The photo whose write failed is written now, although its score was recorded: all three changed.
    assert again.stdout.count("[embedded]") == 3, again.stdout + again.stderr
    assert all(path.read_bytes() != originals[path] for path in photos)


def test_score_write_after_a_plain_score_writes(env: dict[str, str], photos: Path, tmp_path: Path) -> None:
    """A plain `score` records scores without writing; `score --write` afterwards must write them, not skip
    the photos as already scored."""
    photo = photos / "sub" / "b.png"
    index = str(tmp_path / "index.sqlite3")
    run(["score", "--db", index, str(photo)], env)
    before = photo.read_bytes()
    written = run(["score", "--write", "--write-mode", "sidecar", "--db", index, str(photo)], env)
    assert "[sidecar]" in written.stdout and "1 scored, 0 skipped" in written.stderr
    assert photo.read_bytes() == before and photo.with_name("b.png.xmp").is_file()
    again = run(["score", "--write", "--write-mode", "sidecar", "--db", index, str(photo)], env)
    assert "0 scored, 1 skipped" in again.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["pause"], ["resume"], ["rescore", "--all", "--model", "koniq"]]
)
def test_daemon_commands_never_create_an_index(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """Run as another user (another data folder), `status` and friends used to answer from a new empty
    index in that user's home: "never started". They say where they looked instead, and create nothing."""
    elsewhere = tmp_path / "another-users-home" / ".local" / "share" / "musiqd"
    result = run(command, {**env, "MUSIQD_DATA_DIR": str(elsewhere)}, check_rc=8)
    assert result.stderr.startswith(f"musiqd: error: no index at {elsewhere / 'index.sqlite3'}: ")
    assert "--db or MUSIQD_DATABASE_URL" in result.stderr and "Traceback" not in result.stderr
    assert not elsewhere.exists()


def test_an_index_on_a_full_disk_says_so(env: dict[str, str], photos: Path, small_disk: Path) -> None:
    fill(small_disk, leave=0)
    result = run(
        ["score", str(photos / "sub" / "b.png"), "--db", str(small_disk / "index.sqlite3")], env, check_rc=11
    )
    assert "its disk is full" in result.stderr and "free some space" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
