"""The safe write path: atomic replacement, conflict detection, error mapping, and a kill-at-random crash
test. The original must be intact after every failure, and no temporary file may remain."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_writer import BLOCK_A, BLOCK_B
from imagegen import jpeg_bytes, large_tiff16_bytes, motion_photo_bytes

from musiq_daemon.errors import (
    DiskFullError,
    FileChangedError,
    MusiqError,
    ReadOnlyError,
    WriteError,
)
from musiq_daemon.metadata import safefile
from musiq_daemon.metadata.safefile import (
    TEMP_PREFIX,
    FileSignature,
    atomic_replace,
    cleanup_stale_temps,
    read_snapshot,
)

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def temps(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


def one_line(exc: MusiqError) -> str:
    text = str(exc)
    assert "\n" not in text and text == exc.message
    return text


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "IMG_0001.jpg"
    path.write_bytes(jpeg_bytes(320, 240))
    path.chmod(0o640)
    return path


def test_write_errors_have_their_own_exit_codes() -> None:
    import musiq_daemon.errors as errors

    others = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, MusiqError) and not issubclass(cls, WriteError)
    }
    ours = [
        WriteError.exit_code,
        ReadOnlyError.exit_code,
        DiskFullError.exit_code,
        FileChangedError.exit_code,
    ]
    assert len(set(ours)) == 4 and not others & set(ours)


# --- normal operation ---------------------------------------------------------------------------------------


def test_replace_writes_new_bytes_and_returns_their_signature(photo: Path) -> None:
    data, before = read_snapshot(photo)
    assert data == photo.read_bytes() and before == FileSignature.of(photo)
    new = data + b"new version"
    after = atomic_replace(photo, new, expected=before)
    assert photo.read_bytes() == new
    assert after == FileSignature.of(photo)
    assert after.inode != before.inode  # a new file took the name: readers never saw a partial one
    assert after.size == len(new)
    assert stat.S_IMODE(photo.stat().st_mode) == 0o640  # the original's permissions, not 0600
    assert temps(photo.parent) == []


def test_mtime_changes_by_default_and_is_kept_on_request(photo: Path) -> None:
    old_ns = 1_600_000_000_123_456_789
    os.utime(photo, ns=(old_ns, old_ns))
    _, sig = read_snapshot(photo)
    sig = atomic_replace(photo, b"v2", expected=sig)
    assert sig.mtime_ns != old_ns
    os.utime(photo, ns=(old_ns, old_ns))
    _, sig = read_snapshot(photo)
    sig = atomic_replace(photo, b"v3", expected=sig, preserve_mtime=True)
    assert photo.stat().st_mtime_ns == old_ns == sig.mtime_ns


def test_other_hard_links_keep_the_old_version(photo: Path) -> None:
    # A hard-link backup (rsnapshot, cp -al) of the photo must not change when the photo is rewritten.
    backup = photo.with_name("backup.jpg")
    os.link(photo, backup)
    old = photo.read_bytes()
    _, sig = read_snapshot(photo)
    atomic_replace(photo, b"new", expected=sig)
    assert backup.read_bytes() == old and photo.read_bytes() == b"new"


def test_extended_attributes_are_kept(photo: Path) -> None:
    try:
        os.setxattr(photo, "user.xdg.tags", b"holiday,best")
    except OSError as exc:
        pytest.skip(f"no user extended attributes on this filesystem ({exc.strerror})")
    _, sig = read_snapshot(photo)
    atomic_replace(photo, b"new", expected=sig)
    assert os.getxattr(photo, "user.xdg.tags") == b"holiday,best"


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_owner_and_group_are_kept(photo: Path) -> None:
    os.chown(photo, 1234, 5678)
    _, sig = read_snapshot(photo)
    atomic_replace(photo, b"new", expected=sig)
    info = photo.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 5678, 0o640)


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_write_refused_when_the_owner_cannot_be_kept(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a non-root musiqd user writing another user's photo: chown is not permitted.
    os.chown(photo, 1234, 5678)
    old = photo.read_bytes()
    _, sig = read_snapshot(photo)

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    with pytest.raises(ReadOnlyError) as caught:
        atomic_replace(photo, b"new", expected=sig)
    message = one_line(caught.value)
    assert "owner (uid 1234)" in message and "group (gid 5678)" in message and "sidecar" in message
    assert photo.read_bytes() == old and photo.stat().st_uid == 1234
    assert temps(photo.parent) == []


def test_create_new_file(tmp_path: Path) -> None:
    target = tmp_path / "IMG_0001.xmp"
    sig = atomic_replace(target, b"<x:xmpmeta/>", expected=None)
    assert target.read_bytes() == b"<x:xmpmeta/>" and sig == FileSignature.of(target)
    assert target.stat().st_nlink == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~safefile._umask()
    assert temps(tmp_path) == []


def test_create_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "IMG_0001.xmp"
    target.write_bytes(b"the user's sidecar")
    with pytest.raises(FileChangedError):
        atomic_replace(target, b"ours", expected=None)
    assert target.read_bytes() == b"the user's sidecar"

    # Another program creates it while musiqd is writing: the last check sees it.
    other = tmp_path / "IMG_0002.xmp"
    real_write = safefile._write_all

    def write_and_race(fd: int, data: bytes) -> None:
        real_write(fd, data)
        other.write_bytes(b"created meanwhile")

    monkeypatch.setattr(safefile, "_write_all", write_and_race)
    with pytest.raises(FileChangedError):
        atomic_replace(other, b"ours", expected=None)
    assert other.read_bytes() == b"created meanwhile"
    monkeypatch.undo()

    # ... or after the last check, just before the link: the hard link refuses to replace it.
    late = tmp_path / "IMG_0003.xmp"
    real_link = os.link

    def race_then_link(src: Path, dst: Path, **kwargs: bool) -> None:
        late.write_bytes(b"created at the last moment")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", race_then_link)
    with pytest.raises(FileChangedError) as caught:
        atomic_replace(late, b"ours", expected=None)
    assert "appeared while musiqd was creating it" in one_line(caught.value)
    assert late.read_bytes() == b"created at the last moment"
    assert temps(tmp_path) == []


def test_create_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAT/exFAT and some SMB servers refuse hard links: the fallback still creates the file once.
    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "IMG_0001.xmp"
    atomic_replace(target, b"ours", expected=None)
    assert target.read_bytes() == b"ours" and temps(tmp_path) == []
    with pytest.raises(FileChangedError):
        atomic_replace(target, b"again", expected=None)
    assert target.read_bytes() == b"ours" and temps(tmp_path) == []


def test_long_and_non_ascii_names(tmp_path: Path) -> None:
    name = "Ürlaub-" + "ß" * 120 + ".jpg"  # 254 bytes in UTF-8: the temporary name must be trimmed
    assert len(os.fsencode(name)) <= 255
    target = tmp_path / name
    target.write_bytes(b"old")
    _, sig = read_snapshot(target)
    atomic_replace(target, b"new", expected=sig)
    assert target.read_bytes() == b"new" and temps(tmp_path) == []


# --- another program changes the file -----------------------------------------------------------------------


def test_refuses_when_the_file_changed_since_it_was_read(photo: Path) -> None:
    _, sig = read_snapshot(photo)
    with photo.open("ab") as f:  # an in-place save by another program
        f.write(b"edited elsewhere")
    edited = photo.read_bytes()
    with pytest.raises(FileChangedError) as caught:
        atomic_replace(photo, b"ours", expected=sig)
    assert (
        one_line(caught.value)
        == f"{photo} changed while musiqd was writing it; nothing was written: score it again"
    )
    assert photo.read_bytes() == edited and temps(photo.parent) == []


def test_refuses_when_replaced_with_same_size_and_time(photo: Path) -> None:
    # An atomic save by another program with the same size and time: only the inode tells.
    _, sig = read_snapshot(photo)
    swap = photo.with_name("other.tmp")
    swap.write_bytes(b"x" * sig.size)
    os.utime(swap, ns=(sig.mtime_ns, sig.mtime_ns))
    swap.replace(photo)
    with pytest.raises(FileChangedError):
        atomic_replace(photo, b"ours", expected=sig)
    assert photo.read_bytes() == b"x" * sig.size


def test_refuses_when_the_file_vanished(photo: Path) -> None:
    _, sig = read_snapshot(photo)
    photo.unlink()
    with pytest.raises(FileChangedError) as caught:
        atomic_replace(photo, b"ours", expected=sig)
    assert "moved or deleted" in one_line(caught.value)
    assert not photo.exists() and temps(photo.parent) == []


def test_checks_again_just_before_replacing(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The other program saves while musiqd is writing its temporary file.
    _, sig = read_snapshot(photo)
    real_write = safefile._write_all

    def write_and_race(fd: int, data: bytes) -> None:
        real_write(fd, data)
        photo.write_bytes(b"saved by another program meanwhile")

    monkeypatch.setattr(safefile, "_write_all", write_and_race)
    with pytest.raises(FileChangedError):
        atomic_replace(photo, b"ours", expected=sig)
    assert photo.read_bytes() == b"saved by another program meanwhile"
    assert temps(photo.parent) == []


def test_read_snapshot_retries_while_the_file_is_being_written(
    photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safefile, "_READ_RETRY_DELAY_S", 0.0)
    real_of = FileSignature.of.__func__  # type: ignore[attr-defined]
    state = {"calls": 0, "changes": 1}  # one change: the second attempt gets a consistent snapshot

    def changing(cls: type[FileSignature], path: Path) -> FileSignature:
        state["calls"] += 1
        if state["calls"] <= state["changes"]:  # another program appends while musiqd reads
            with Path(path).open("ab") as f:
                f.write(b"more")
        result: FileSignature = real_of(cls, path)
        return result

    monkeypatch.setattr(FileSignature, "of", classmethod(changing))
    data, _ = read_snapshot(photo)
    assert data == photo.read_bytes() and state["calls"] == 2
    state.update(calls=0, changes=99)  # always changing: give up with a retryable error
    with pytest.raises(FileChangedError) as caught:
        read_snapshot(photo)
    assert "changed while musiqd was reading it" in one_line(caught.value)


# --- what musiqd refuses to write ---------------------------------------------------------------------------


def test_symlinks_are_refused(photo: Path) -> None:
    link = photo.with_name("link.jpg")
    link.symlink_to(photo.name)
    old = photo.read_bytes()
    with pytest.raises(WriteError) as caught:
        read_snapshot(link)
    assert "symbolic link" in one_line(caught.value)
    sig = FileSignature.of(link)  # the link's own signature
    with pytest.raises(WriteError) as caught:
        atomic_replace(link, b"new", expected=sig)
    assert "symbolic link" in one_line(caught.value)
    assert link.is_symlink() and photo.read_bytes() == old and temps(photo.parent) == []


def test_non_regular_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match="not a regular file"):
        read_snapshot(fifo)  # must not block waiting for a writer
    with pytest.raises(WriteError, match="not a regular file"):
        atomic_replace(tmp_path, b"x", expected=FileSignature.of(tmp_path))
    with pytest.raises(WriteError, match="not found"):
        read_snapshot(tmp_path / "missing.jpg")


# --- failures: the original is untouched and no temporary file remains --------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (errno.EIO, WriteError, "input/output error"),
        (errno.ENOSPC, DiskFullError, "no space left"),
        (errno.EDQUOT, DiskFullError, "quota"),
        (errno.EFBIG, WriteError, "too large"),
    ],
)
def test_write_failures(
    photo: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[WriteError], words: str
) -> None:
    old = photo.read_bytes()
    _, sig = read_snapshot(photo)

    def failing(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(error) as caught:
        atomic_replace(photo, b"new" * 1000, expected=sig)
    assert type(caught.value) is error and words in one_line(caught.value)
    assert photo.read_bytes() == old and FileSignature.of(photo) == sig
    assert temps(photo.parent) == []


def test_directory_without_write_permission(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated (root ignores permission bits): creating the temporary file is refused.
    real_open = os.open

    def guarded(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kwargs: int | None) -> int:
        if Path(path).name.startswith(TEMP_PREFIX):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    _, sig = read_snapshot(photo)
    with pytest.raises(ReadOnlyError) as caught:
        atomic_replace(photo, b"new", expected=sig)
    assert one_line(caught.value) == (
        f"cannot write next to {photo}: directory is read-only; use write mode 'sidecar' or "
        "'index-only', or give the musiqd user write access"
    )


def test_interrupted_write_removes_the_temporary_file(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = photo.read_bytes()
    _, sig = read_snapshot(photo)

    def interrupted(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(safefile, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_replace(photo, b"new" * 100, expected=sig)
    assert photo.read_bytes() == old and temps(photo.parent) == []


def test_file_size_limit_in_a_child_process(tmp_path: Path) -> None:
    """A real failing write without root: RLIMIT_FSIZE makes the kernel refuse bytes past 64 KB (EFBIG
    once SIGXFSZ is ignored), in the middle of writing the temporary file."""
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(jpeg_bytes(320, 240))
    old = photo.read_bytes()
    code = f"""
import resource, signal, sys
from pathlib import Path
from musiq_daemon.metadata.safefile import atomic_replace, read_snapshot
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
path = Path({str(photo)!r})
data, sig = read_snapshot(path)
try:
    atomic_replace(path, data + bytes(200_000), expected=sig)
except Exception as exc:
    print(type(exc).__name__, exc, sep="|")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    kind, message = result.stdout.strip().split("|")
    assert kind == "WriteError" and "too large" in message, result.stdout + result.stderr
    assert photo.read_bytes() == old and temps(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (needs root and permission to mount; skipped otherwise)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)


def test_disk_full_on_a_real_filesystem(tiny_tmpfs: Path) -> None:
    photo = tiny_tmpfs / "IMG_0001.jpg"
    photo.write_bytes(os.urandom(400_000))
    old = photo.read_bytes()
    free_before = os.statvfs(tiny_tmpfs).f_bfree
    _, sig = read_snapshot(photo)
    with pytest.raises(DiskFullError) as caught:
        atomic_replace(photo, os.urandom(700_000), expected=sig)  # 0.4 + 0.7 MB do not fit in 1 MB
    assert "no space left" in one_line(caught.value)
    assert photo.read_bytes() == old and FileSignature.of(photo) == sig
    assert temps(tiny_tmpfs) == []
    assert os.statvfs(tiny_tmpfs).f_bfree == free_before  # the partial temporary file's space is back


def test_read_only_filesystem(tiny_tmpfs: Path) -> None:
    photo = tiny_tmpfs / "IMG_0001.jpg"
    photo.write_bytes(b"photo")
    _, sig = read_snapshot(photo)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(ReadOnlyError) as caught:
        atomic_replace(photo, b"new", expected=sig)
    assert "read-only" in one_line(caught.value) and "index-only" in caught.value.message
    assert photo.read_bytes() == b"photo"


# --- stale temporary files ----------------------------------------------------------------------------------


def test_cleanup_removes_only_our_temporary_files(tmp_path: Path) -> None:
    sub = tmp_path / "2024" / "holiday"
    sub.mkdir(parents=True)
    ours = [tmp_path / f"{TEMP_PREFIX}IMG_1.jpg.0a1b2c3d", sub / f"{TEMP_PREFIX}IMG_2.CR2.xmp.99ff00aa"]
    for path in ours:
        path.write_bytes(b"partial")
    keep = [
        tmp_path / "IMG_1.jpg",
        tmp_path / "musiqd-tmp-IMG_1.jpg",  # no leading dot: not ours
        tmp_path / "IMG_1.jpg_exiftool_tmp",
        sub / ".IMG_2.jpg.tmp",
    ]
    for path in keep:
        path.write_bytes(b"keep")
    (tmp_path / f"{TEMP_PREFIX}dir").mkdir()  # only files are removed
    (tmp_path / f"{TEMP_PREFIX}link").symlink_to("IMG_1.jpg")

    assert cleanup_stale_temps(tmp_path) == [ours[0]]
    assert ours[1].exists()
    assert cleanup_stale_temps(tmp_path, recursive=True) == [ours[1]]
    assert all(path.read_bytes() == b"keep" for path in keep)
    assert (tmp_path / f"{TEMP_PREFIX}dir").is_dir() and (tmp_path / f"{TEMP_PREFIX}link").is_symlink()
    assert cleanup_stale_temps(tmp_path / "missing") == []


def test_cleanup_during_a_write_leaves_the_original_intact(
    photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second musiqd process starting up removes the temporary file of a write in progress.
    old = photo.read_bytes()
    _, sig = read_snapshot(photo)
    real_write = safefile._write_all

    def write_then_cleanup(fd: int, data: bytes) -> None:
        real_write(fd, data)
        assert len(cleanup_stale_temps(photo.parent)) == 1

    monkeypatch.setattr(safefile, "_write_all", write_then_cleanup)
    with pytest.raises(FileChangedError, match="is unchanged: score it again"):
        atomic_replace(photo, b"new", expected=sig)
    assert photo.read_bytes() == old and temps(photo.parent) == []


# --- the crash test -----------------------------------------------------------------------------------------

KILLS = 100
MIN_HITS = 10  # kills that landed during a write, and version changes seen: proof that the test tests
# About 30 s on two cores; the limit only stops a run that stalls (a heavily loaded machine is slower).
CRASH_LIMIT_S = 120.0


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_kill_at_random_moments_never_damages_a_file(tmp_path: Path) -> None:
    """SIGKILL a process that keeps rewriting four 25 MB photos: after every kill each photo is exactly
    its old or its new version, and cleanup removes every temporary file left behind."""
    photos = tmp_path / "photos"
    photos.mkdir()
    bases = {
        "PXL_0001.MP.jpg": motion_photo_bytes(1600, 1200, video_bytes=24_000_000, seed=1),
        "PXL_0002.MP.jpg": motion_photo_bytes(1200, 1600, video_bytes=24_000_000, seed=2),
        "scan_0001.tif": large_tiff16_bytes(25_000_000, seed=3),
        "scan_0002.tif": large_tiff16_bytes(25_000_000, seed=4),
    }
    versions: dict[Path, set[str]] = {}
    for name, base in bases.items():
        # Version A/B: a comment block after SOI in the JPEGs, after the image data in the TIFFs.
        a = base[:2] + BLOCK_A + base[2:] if name.endswith(".jpg") else base + BLOCK_A
        b = a.replace(BLOCK_A, BLOCK_B, 1)
        path = photos / name
        path.write_bytes(a)
        versions[path] = {hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()}
    del bases
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(Path(__file__).with_name("crash_writer.py")), *map(str, versions)]
    last = {path: _sha256(path) for path in versions}
    kills = mid_write = rewrites = 0
    started = time.monotonic()
    # Without enough hits the test would prove nothing: it goes on (within the limit) until the kills have
    # landed while files were being rewritten, and the writer has got far enough to change versions.
    while kills < KILLS or mid_write < MIN_HITS or rewrites < MIN_HITS:
        assert time.monotonic() - started < CRASH_LIMIT_S, (
            f"after {kills} kills, only {mid_write} hit a write in progress and {rewrites} version "
            f"changes were seen (seed {seed})"
        )
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n", child.communicate()
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate()
        assert child.returncode == -signal.SIGKILL, f"the writer failed by itself: {stderr.decode()}"
        kills += 1
        left = temps(photos)
        mid_write += bool(left)
        for path, allowed in versions.items():
            digest = _sha256(path)
            assert digest in allowed, f"{path.name} damaged after kill {kills} (seed {seed})"
            rewrites += digest != last[path]
            last[path] = digest
        assert sorted(cleanup_stale_temps(photos)) == left
        assert temps(photos) == []
    print(f"crash test: {kills} kills, {mid_write} mid-write, {rewrites} version changes seen, seed {seed}")


# --- sparse and oversized files ----------------------------------------------------------------------------


def sparse_file(path: Path, data: bytes, length: int) -> Path:
    """``data`` followed by a hole up to ``length`` bytes (skips where the file system stores no holes)."""
    path.write_bytes(data)
    os.truncate(path, length)
    if path.stat().st_blocks * 512 * 2 >= length:
        pytest.skip("this file system does not keep holes")
    return path


def test_sparse_files_are_neither_read_nor_rewritten(tmp_path: Path) -> None:
    photo = sparse_file(tmp_path / "holes.jpg", jpeg_bytes(64, 48), 40_000_000)
    before = photo.stat()
    with pytest.raises(WriteError) as caught:
        read_snapshot(photo)
    message = one_line(caught.value)
    assert message.startswith(f"{photo} is sparse (") and "KB on disk, 40.0 MB long)" in message
    assert "does not rewrite sparse files" in message and "nothing was written" in message
    # The replacement would store the holes as data: refused before anything is written.
    with pytest.raises(WriteError, match="sparse"):
        atomic_replace(photo, b"new", expected=FileSignature.of(photo))
    after = photo.stat()
    assert (after.st_ino, after.st_size, after.st_blocks, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_blocks,
        before.st_mtime_ns,
    )
    assert temps(tmp_path) == []


def test_sparse_stored_bytes(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    photo = sparse_file(tmp_path / "holes.jpg", data, 30_000_000)
    with photo.open("rb") as f:
        f.seek(1234)
        stored = safefile.sparse_stored_bytes(f.fileno(), os.fstat(f.fileno()))
        assert f.tell() == 1234  # the offset is kept
    assert stored is not None and len(data) <= stored < 2_000_000
    # Short files never count as sparse, nor do files without holes.
    small = sparse_file(tmp_path / "small.jpg", data, safefile.SPARSE_MIN_BYTES - 1)
    full = tmp_path / "full.jpg"
    full.write_bytes(data * 40)
    for path in (small, full):
        with path.open("rb") as f:
            assert safefile.sparse_stored_bytes(f.fileno(), os.fstat(f.fileno())) is None
    assert read_snapshot(small)[0][: len(data)] == data


def test_read_snapshot_reads_at_most_max_bytes(photo: Path) -> None:
    size = photo.stat().st_size
    assert read_snapshot(photo, max_bytes=size)[0] == photo.read_bytes()
    with pytest.raises(WriteError) as caught:
        read_snapshot(photo, max_bytes=size - 1)
    assert "more than the" in one_line(caught.value) and "nothing was written" in one_line(caught.value)
