"""The only way musiqd changes a file on disk.

Metadata libraries write in place (open with truncation): a crash, a full disk or a kill in the middle
leaves a truncated photo. Here a file is changed in three steps instead:

1. :func:`read_snapshot` reads the whole file and its :class:`FileSignature` (device, inode, size,
   modification time), and makes sure nobody wrote to it while it was being read. The read is bounded:
   by the size the file had when it was opened, and by the caller's ``max_bytes``.
2. The caller builds the new bytes in memory and verifies them.
3. :func:`atomic_replace` writes them to a temporary file in the same directory (``TEMP_PREFIX`` + name +
   random suffix, mode 0600 while being written), flushes it to disk, gives it the original's permissions,
   owner, group and extended attributes, checks that the original still has the signature read in step 1,
   and renames the temporary file over it. A rename within one directory is atomic: every reader, and the
   disk after a crash, sees either the complete old file or the complete new one, never a mixture.

Any failure removes the temporary file and leaves the original untouched. A kill leaves, at worst, a stale
temporary file, which :func:`cleanup_stale_temps` removes at start-up.

Decisions:

* Symbolic links are refused, not followed. Renaming over a link replaces the link itself with a regular
  file (the link is gone, its target keeps the old bytes); writing to the resolved target instead would
  change a file outside the folder the user pointed musiqd at, possibly one shared with other links.
  A caller that wants the target written passes the resolved path.
* Hard links: the replaced path gets a new inode. Other names of the old inode keep the old bytes; that is
  what hard-link backups (rsnapshot, ``cp -al`` snapshots) need: a backup copy is never changed behind
  their back.
* Ownership and permissions are kept or the write is refused. The new file gets the original's permission
  bits, owner and group, and its ``user.*`` extended attributes and POSIX ACL (NAS file managers and
  macOS keep tags and colour labels there). When that is not possible (musiqd runs as another user and
  may not give files away), the write is refused instead of silently turning the photographer's file into
  musiqd's: the photographer could lose write access to their own photo.
* The modification time changes by default; ``preserve_mtime`` keeps it, at a cost: backup tools that skip
  files of unchanged size and time (rsync's default) then miss the new version.
* Creating a file (``expected=None``, e.g. a new sidecar) never overwrites one that appeared meanwhile:
  the temporary file is hard-linked to the target name, which fails if the name exists. On filesystems
  without hard links (FAT/exFAT, some SMB servers) the fallback is an existence check followed by a rename,
  which leaves a window of microseconds in which a file created by another program could be replaced.

* Sparse files are refused, never read or replaced (:func:`sparse_stored_bytes`). A photo has no holes:
  every byte of it was written. A file that is mostly holes (a valid JPEG followed by gigabytes never
  written: 100 KB on disk, 3 GB long) would cost its full length in memory, and its copy would store the
  holes as data: the rewrite of a 100 KB file would fill 3 GB of disk. Copying the holes as holes instead
  was rejected: such a file is no photo worth writing into, and a hole-preserving copy needs a second,
  file-system dependent copy path for nothing else.

Limits, inherent to POSIX files: between the last check of the signature and the rename there remains a
window of microseconds in which another program's write would be lost (its data goes to the replaced
inode); a program that keeps the file open and writes later also writes to the replaced inode. A change
that keeps size and modification time on a filesystem with coarse timestamps (FAT's 2 s) is not seen.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from musiq_daemon.errors import DiskFullError, FileChangedError, ReadOnlyError, WriteError

__all__ = [
    "SPARSE_MIN_BYTES",
    "TEMP_PREFIX",
    "DiskFullError",
    "FileChangedError",
    "FileSignature",
    "ReadOnlyError",
    "WriteError",
    "atomic_replace",
    "cleanup_stale_temps",
    "read_snapshot",
    "sparse_stored_bytes",
]

# Hidden (a leading dot) and ending in a random suffix rather than the photo's extension, so that photo
# managers, NAS indexers and our own watcher do not take a half-written temporary file for a photo.
TEMP_PREFIX: Final = ".musiqd-tmp-"

_NAME_MAX: Final = 255  # bytes per file name on every filesystem a NAS exports (ext4, btrfs, ZFS, SMB, NFS)
_READ_ATTEMPTS: Final = 3
_READ_RETRY_DELAY_S: Final = 0.2  # lets a short write by another program finish before reading again
# Extended attributes whose loss would change what the user sees or who may access the file. Others
# (security.*, trusted.*) are set by the kernel or need privileges: the new file gets the defaults.
_REQUIRED_XATTRS: Final = ("user.", "system.posix_acl_access")
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV})
_READ_ONLY: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# Files shorter than this are never called sparse: file systems allocate whole blocks and keep tiny files
# inline (so the allocation says little about them), and reading a few MB threatens nothing.
SPARSE_MIN_BYTES: Final = 8_000_000
_MAX_EXTENTS: Final = 10_000  # data ranges walked to measure a sparse file; the rest counts as data
_READ_CHUNK: Final = 1 << 30  # one read(2) returns at most about 2 GiB on Linux


@dataclass(frozen=True)
class FileSignature:
    """What identifies one exact version of a file: a write by anyone changes the inode (atomic saves), or
    the size or modification time (in-place writes)."""

    dev: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileSignature:
        """The signature of the directory entry ``path`` itself (a symbolic link is not followed: its own
        signature is returned, and :func:`atomic_replace` refuses to write it). Raises :class:`OSError`
        (e.g. :class:`FileNotFoundError`) as :func:`os.lstat` does."""
        return cls.from_stat(os.lstat(path))

    @classmethod
    def from_stat(cls, info: os.stat_result) -> FileSignature:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def read_snapshot(path: Path, *, max_bytes: int | None = None) -> tuple[bytes, FileSignature]:
    """The whole content of ``path`` and the signature of exactly that version.

    The signature is taken before and after reading, and the path must still name the file that was read;
    a file being written meanwhile is read again (up to 3 times, 0.2 s apart), then
    :class:`FileChangedError`. Symbolic links, non-regular files, sparse files and files longer than
    ``max_bytes`` raise :class:`WriteError` without being read (this is the read half of a write).
    """
    label = _label(path)
    for attempt in range(_READ_ATTEMPTS):
        if attempt:
            time.sleep(_READ_RETRY_DELAY_S)
        try:
            # O_NONBLOCK: opening a FIFO must not hang (it is refused below); no effect on regular files.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise _read_error(exc, path, label) from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise WriteError(f"{label} is not a regular file; musiqd only writes regular files")
            _refuse_sparse(fd, before, label)
            if max_bytes is not None and before.st_size > max_bytes:
                raise WriteError(
                    f"{label} is {_mb(before.st_size)} long, more than the {_mb(max_bytes)} musiqd reads "
                    "of it; nothing was written"
                )
            # One byte more than the size at opening: a file that grows meanwhile is noticed below without
            # reading all of it.
            data = _read_up_to(fd, before.st_size + 1)
            after = FileSignature.from_stat(os.fstat(fd))
            at_path = FileSignature.of(path)
        except OSError as exc:
            raise _read_error(exc, path, label) from None
        finally:
            os.close(fd)
        if FileSignature.from_stat(before) == after == at_path and len(data) == after.size:
            return data, after
    raise FileChangedError(
        f"{label} changed while musiqd was reading it; nothing was written: score it again"
    )


def atomic_replace(
    path: Path, data: bytes, *, expected: FileSignature | None, preserve_mtime: bool = False
) -> FileSignature:
    """Replace ``path`` with ``data`` atomically and return the new file's signature.

    ``expected``: the signature of the version the new bytes were derived from (see :func:`read_snapshot`);
    if the file no longer has it, nothing is written and :class:`FileChangedError` is raised. ``None``
    creates a new file and raises :class:`FileChangedError` if one exists. ``preserve_mtime`` keeps the
    original's access and modification times (ignored when creating). Errors: :class:`ReadOnlyError`,
    :class:`DiskFullError`, :class:`FileChangedError`, :class:`WriteError`; in every case the original is
    unchanged and no temporary file is left behind. A sparse original is refused (:class:`WriteError`):
    its replacement would store its holes as data.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"not a file path: {path!s}")
    label = _label(path)
    original = _check_current(path, expected, label)
    if original is not None:
        _refuse_sparse_path(path, original, label)
    # Created with the permissions it will keep: a filesystem that ignores chmod (SMB, FUSE mounts with
    # fixed modes) then still ends up with them, and the check in _copy_attributes passes.
    mode = stat.S_IMODE(original.st_mode) & 0o777 if original is not None else 0o666
    temp, fd = _create_temp(path, label, mode)
    try:
        try:
            try:
                _write_all(fd, data)
                _copy_attributes(fd, path, original, label)
                if preserve_mtime and original is not None:
                    os.utime(fd, ns=(original.st_atime_ns, original.st_mtime_ns))
                # Data and inode reach the disk before the rename makes them visible under the real name:
                # otherwise a power cut right after the rename could leave an empty file.
                os.fsync(fd)
                written = os.fstat(fd)
            finally:
                os.close(fd)  # network filesystems report deferred write errors here
        except OSError as exc:
            raise _write_error(exc, label, "write") from None
        if written.st_size != len(data):
            raise WriteError(
                f"cannot write {label}: the filesystem stored {written.st_size} of {len(data)} bytes"
            )
        _check_current(path, expected, label)  # as late as possible: another program may have saved it
        try:
            if expected is None:
                _create_from(temp, path, label)
            else:
                temp.replace(path)
        except FileNotFoundError:
            # Our temporary file vanished: another musiqd process cleaned up stale files meanwhile.
            raise FileChangedError(
                f"the temporary copy of {label} was removed before it could be put in place; "
                f"{label} is unchanged: score it again"
            ) from None
        except OSError as exc:
            raise _write_error(exc, label, "replace") from None
    except BaseException:
        _remove_quietly(temp)
        raise
    _fsync_directory(path.parent)
    # Stat again by name: a network filesystem may settle the modification time only at close. If another
    # program has already replaced the file again, the signature of what we wrote is still the answer.
    with contextlib.suppress(OSError):
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
            return FileSignature.from_stat(now)
    return FileSignature.from_stat(written)


def sparse_stored_bytes(fd: int, info: os.stat_result) -> int | None:
    """The bytes of the open regular file ``fd`` (``info`` its stat) that hold data, when the file is
    sparse: at least :data:`SPARSE_MIN_BYTES` long and more than half of it holes (ranges never written,
    which read as zeros and take no disk space). None for every other file. The file offset is kept.

    The allocation (``st_blocks``) is only the first clue: file systems that compress (ZFS, btrfs with
    compression) store a compressible file in fewer blocks than its length without any hole. A file that
    looks short on disk is measured with ``SEEK_DATA``/``SEEK_HOLE``, which report holes only. A file
    system that reports no allocation at all (``st_blocks`` 0: some FUSE and network file systems) is not
    second-guessed.
    """
    size = info.st_size
    blocks = getattr(info, "st_blocks", 0)
    if size < SPARSE_MIN_BYTES or blocks <= 0 or blocks * 512 * 2 >= size:
        return None
    stored = _data_bytes(fd, size)
    if stored is None:  # no SEEK_DATA here: the allocation is all there is to go by
        stored = blocks * 512
    return stored if stored * 2 < size else None


def cleanup_stale_temps(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files a killed musiqd left in ``directory`` (and its subdirectories when
    ``recursive``; symbolic links to directories are not followed) and return them.

    Only regular files whose names start with :data:`TEMP_PREFIX` are touched. A temporary file that
    belongs to a write still in progress in another process may be removed too: that write then fails
    with :class:`FileChangedError` and leaves its original unchanged. Unreadable directories and files
    that cannot be removed are skipped.
    """
    removed: list[Path] = []
    pending = [Path(directory)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                found = list(entries)
        except OSError:
            continue
        for entry in found:
            try:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink()
                    removed.append(Path(entry.path))
                elif recursive and entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
            except OSError:
                continue
    return removed


# --- steps of atomic_replace -------------------------------------------------------------------------------


def _check_current(path: Path, expected: FileSignature | None, label: str) -> os.stat_result | None:
    """The original's stat when it still has signature ``expected`` (None: when it still does not
    exist); otherwise the reason not to write, as an exception."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if expected is None:
            return None
        raise FileChangedError(
            f"{label} was moved or deleted while musiqd was writing it; nothing was written"
        ) from None
    except OSError as exc:
        raise _write_error(exc, label, "stat") from None
    if stat.S_ISLNK(info.st_mode):
        raise WriteError(
            f"{label} is a symbolic link; musiqd does not write through links: "
            "point musiqd at the photo itself, or use write mode 'sidecar' or 'index-only'"
        )
    if not stat.S_ISREG(info.st_mode):
        raise WriteError(f"{label} is not a regular file; musiqd only writes regular files")
    if expected is None:
        raise FileChangedError(
            f"{label} already exists; musiqd creates it only where there is no file, and will retry"
        )
    if FileSignature.from_stat(info) != expected:
        raise FileChangedError(
            f"{label} changed while musiqd was writing it; nothing was written: score it again"
        )
    return info


def _refuse_sparse(fd: int, info: os.stat_result, label: str) -> None:
    stored = sparse_stored_bytes(fd, info)
    if stored is not None:
        raise WriteError(
            f"{label} is sparse ({_mb(stored)} on disk, {_mb(info.st_size)} long): musiqd does not rewrite "
            "sparse files (a copy would store their holes as data); nothing was written"
        )


def _refuse_sparse_path(path: Path, info: os.stat_result, label: str) -> None:
    """:func:`_refuse_sparse` for the original about to be replaced (``info`` its lstat)."""
    if info.st_size < SPARSE_MIN_BYTES or info.st_blocks * 512 * 2 >= info.st_size:
        return  # the common case decided without opening the file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # unreadable now: the replace step reports what is wrong
    try:
        _refuse_sparse(fd, os.fstat(fd), label)
    finally:
        os.close(fd)


def _data_bytes(fd: int, size: int) -> int | None:
    """The bytes of the first ``size`` of ``fd`` that are not holes; None when the system cannot tell."""
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return None
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    stored = pos = 0
    try:
        for _ in range(_MAX_EXTENTS):
            if pos >= size:
                break
            try:
                start = os.lseek(fd, pos, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole after pos
                    break
                return None
            end = os.lseek(fd, start, seek_hole)
            stored += max(0, min(end, size) - start)
            pos = end
        else:
            stored += max(0, size - pos)  # too fragmented to walk: the rest counts as data
    except OSError:
        return None
    finally:
        os.lseek(fd, offset, os.SEEK_SET)
    return stored


def _read_up_to(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes of ``fd`` from its offset: fewer at the end of the file."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)  # a single chunk is returned as it is, not copied


def _create_temp(path: Path, label: str, mode: int = 0o600) -> tuple[Path, int]:
    """A new, empty temporary file next to ``path`` with permissions ``mode`` (less the umask): (its path, a
    descriptor open for writing). It holds a copy of a photo that is already readable with those
    permissions, so nothing is exposed that the photo does not expose."""
    stem = TEMP_PREFIX + path.name
    for _ in range(16):  # 32 random bits: a collision means someone else is writing the same name
        suffix = "." + secrets.token_hex(4)
        # Trim whole characters (a cut inside a UTF-8 sequence makes a name SMB servers reject) so that the
        # name fits the 255-byte limit however long the photo's name is; cleanup only needs the prefix.
        while len(os.fsencode(stem + suffix)) > _NAME_MAX:
            stem = stem[:-1]
        temp = path.parent / (stem + suffix)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            return temp, os.open(temp, flags, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(exc, label, "create") from None
    raise WriteError(f"cannot create a temporary file next to {label}: too many name collisions")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]  # a write may be partial (signals, > 2 GiB)


def _copy_attributes(fd: int, path: Path, original: os.stat_result | None, label: str) -> None:
    """Give the temporary file the original's owner, group, permissions and extended attributes (a new
    file: the permissions any program would create it with); refuse when they cannot be kept."""
    if original is None:
        os.fchmod(fd, 0o666 & ~_umask())
        return
    mode = stat.S_IMODE(original.st_mode)
    # Ownership first: chown clears the set-id bits that chmod then restores. Failures are judged below by
    # what the file ended up with, because network filesystems fail, or silently ignore, in many ways.
    try:
        os.fchown(fd, original.st_uid, original.st_gid)
    except OSError:
        with contextlib.suppress(OSError):
            os.fchown(fd, -1, original.st_gid)  # a non-root owner may still set one of its own groups
    with contextlib.suppress(OSError):
        os.fchmod(fd, mode)
    _copy_xattrs(fd, path, label)
    result = os.fstat(fd)
    lost = []
    if result.st_uid != original.st_uid:
        lost.append(f"owner (uid {original.st_uid})")
    if result.st_gid != original.st_gid and mode & stat.S_IRWXG:
        lost.append(f"group (gid {original.st_gid})")
    keep = ~(stat.S_ISUID | stat.S_ISGID)  # meaningless on photos and dropped by some servers
    if stat.S_IMODE(result.st_mode) & keep != mode & keep:
        lost.append(f"permissions ({mode:o})")
    if lost:
        raise ReadOnlyError(
            f"cannot write {label} without changing its {' and '.join(lost)}; run musiqd as the user who "
            "owns the photos, or use write mode 'sidecar' or 'index-only'"
        )


def _copy_xattrs(fd: int, path: Path, label: str) -> None:
    if not hasattr(os, "listxattr"):  # not Linux: no extended attributes to carry over
        return
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return  # a filesystem without extended attributes
    for name in names:
        try:
            os.setxattr(fd, name, os.getxattr(path, name, follow_symlinks=False))
        except OSError as exc:
            if name.startswith(_REQUIRED_XATTRS):
                raise WriteError(
                    f"cannot write {label} without losing its extended attribute {name} "
                    f"({_strerror(exc)}); use write mode 'sidecar' or 'index-only'"
                ) from None


def _create_from(temp: Path, path: Path, label: str) -> None:
    """Give ``temp`` the name ``path`` unless a file of that name exists."""
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileChangedError(
            f"{label} appeared while musiqd was creating it; it was left as it is: score the photo again"
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # No hard links on this filesystem: check, then rename (see the module doc for the window).
        if os.path.lexists(path):
            raise FileChangedError(
                f"{label} appeared while musiqd was creating it; it was left as it is: score the photo again"
            ) from None
        temp.replace(path)
        return
    _remove_quietly(temp)  # if this fails the file is in place anyway; start-up cleanup removes the rest


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable. Best effort: the rename is already atomic, and some network
    filesystems refuse to open or sync directories."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _umask() -> int:
    """The process umask, without changing it when /proc tells it (os.umask only sets, which races with
    other threads creating files)."""
    try:
        with Path("/proc/self/status").open(encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


# --- messages ----------------------------------------------------------------------------------------------


def _label(path: Path) -> str:
    """The path for a one-line message (names may contain newlines or undecodable bytes). Kept here rather
    than imported from the decoder, so that writing files does not load the imaging libraries."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(path))


def _mb(size: int) -> str:
    """A file size for a message (as the decoder writes them: powers of 1000)."""
    if size < 1_000_000:
        return f"{-(-size // 1000)} KB"
    if size < 1_000_000_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e9:.1f} GB"


def _strerror(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _read_error(exc: OSError, path: Path, label: str) -> WriteError:
    if exc.errno == errno.ELOOP and path.is_symlink():
        return WriteError(
            f"{label} is a symbolic link; musiqd does not write through links: "
            "point musiqd at the photo itself, or use write mode 'sidecar' or 'index-only'"
        )
    if isinstance(exc, FileNotFoundError):
        return WriteError(f"{label}: file not found (moved or deleted?)")
    if isinstance(exc, PermissionError):
        return WriteError(f"cannot read {label}: permission denied; give the musiqd user read access")
    return WriteError(f"cannot read {label}: {_strerror(exc)}")


def _write_error(exc: OSError, label: str, step: str) -> WriteError:
    """One line saying what failed and how to fix it; ``step`` is create, write, replace or stat."""
    code = exc.errno
    if code in _FULL:
        return DiskFullError(
            f"cannot write {label}: no space left on the device (or the disk quota is used up); "
            "free some space; the photo is unchanged"
        )
    if code == errno.EROFS:
        return ReadOnlyError(
            f"cannot write next to {label}: the filesystem is mounted read-only; "
            "use write mode 'sidecar' or 'index-only', or mount it read-write"
        )
    if code in _READ_ONLY:
        if step == "replace":
            return ReadOnlyError(
                f"cannot replace {label}: permission denied (the file is protected or belongs to another "
                "user in a sticky directory); use write mode 'sidecar' or 'index-only', or give the "
                "musiqd user write access"
            )
        return ReadOnlyError(
            f"cannot write next to {label}: directory is read-only; use write mode 'sidecar' or "
            "'index-only', or give the musiqd user write access"
        )
    if code == errno.EFBIG:
        return WriteError(f"cannot write {label}: file too large for this filesystem or process limit")
    return WriteError(f"cannot write {label}: {_strerror(exc)}")
