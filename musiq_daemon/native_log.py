"""Native libraries' messages: collected per photo, or captured to the debug log, never printed raw.

Two kinds: libexiv2's log messages (below) and what native code writes straight on file descriptor 2
(LiteRT creating and destroying accelerators, LibRaw's "Unexpected end of file", TensorFlow's converter):
:func:`capture_native_stderr`, at the end of this module.

libexiv2's log messages: collected per photo and turned into one line that names it.

python-exiv2 hands libexiv2's messages (``LogMsg``; warnings and errors by default) to the Python logger
``exiv2``. Left alone they reach stderr as ``WARNING exiv2: Directory Image: Next pointer is out of
bounds`` - no photo named, and from a daemon's worker threads, mixed up. Importing this module routes
them through one process-wide handler instead:

* inside ``with exiv2_messages() as messages:`` they are appended to ``messages`` (per thread: each
  worker collects its own photo's messages) and printed nowhere; :func:`summarise` makes them one line;
* anywhere else they go to the debug log (logger ``musiq_daemon.native_log``).

Example::

    with exiv2_messages() as messages:
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
    line = summarise(label, messages)
    if line is not None:
        log.warning("%s", line)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import exiv2

log = logging.getLogger(__name__)

#: The logger python-exiv2's ``pythonHandler`` sends libexiv2's messages to.
EXIV2_LOGGER: Final = "exiv2"


@dataclass(frozen=True)
class NativeMessage:
    """One message of a native library: its :mod:`logging` level and its text (one line)."""

    level: int
    text: str

    @property
    def severity(self) -> str:
        return "error" if self.level >= logging.ERROR else "warning"


class _Collectors(threading.local):
    def __init__(self) -> None:
        self.stack: list[list[NativeMessage]] = []


_collectors = _Collectors()


class _Exiv2Router(logging.Handler):
    """Hands each message to the innermost :func:`exiv2_messages` block of the thread that caused it
    (libexiv2 logs synchronously, in the calling thread), or to the debug log outside any block."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # a malformed record must not break the photo's processing
            self.handleError(record)
            return
        if not text:
            return
        stack = _collectors.stack
        if stack:
            stack[-1].append(NativeMessage(record.levelno, text))
        else:
            log.debug("exiv2 %s: %s", logging.getLevelName(record.levelno).lower(), text)


_install_lock = threading.Lock()
_router: _Exiv2Router | None = None


def install() -> None:
    """Route libexiv2's messages through this module (idempotent; done on import).

    libexiv2 is told to use python-exiv2's Python handler (its own default handler writes to stderr
    directly) at its default level, warnings and errors; the ``exiv2`` logger stops propagating, so the
    root logger's handlers (the CLI's and the daemon's stderr) never see the raw messages.
    """
    global _router
    with _install_lock:
        exiv2.LogMsg.setHandler(exiv2.pythonHandler)
        exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.warn)
        logger = logging.getLogger(EXIV2_LOGGER)
        if _router is None or _router not in logger.handlers:
            _router = _Exiv2Router()
            logger.addHandler(_router)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)  # what libexiv2 sends is filtered there, by its own level


@contextlib.contextmanager
def exiv2_messages() -> Iterator[list[NativeMessage]]:
    """Collect the messages libexiv2 logs in this thread during the block, instead of printing them.

    Blocks nest: a message goes to the innermost block of its thread only. The list stays usable after
    the block (pass it to :func:`summarise`).
    """
    messages: list[NativeMessage] = []
    stack = _collectors.stack
    stack.append(messages)
    try:
        yield messages
    finally:
        # Normally the innermost; found by identity (equal lists are not the same block) in any case.
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is messages:
                del stack[i]
                break


#: At most this many characters of messages go into a summary line.
SUMMARY_LIMIT: Final = 300


def summarise(label: str, messages: Sequence[NativeMessage], library: str = "exiv2") -> str | None:
    """One line naming ``label`` (a photo) for the messages, or None when there were none.

    ``IMG_1.jpg: exiv2 warning: Directory Image: Next pointer is out of bounds; ignored``; repeats are
    shown once, more than one distinct message as ``... (+2 more)``, errors before warnings.
    """
    if not messages:
        return None
    distinct: dict[str, NativeMessage] = {}
    for message in messages:
        known = distinct.get(message.text)
        if known is None or message.level > known.level:
            distinct[message.text] = message
    ordered = sorted(distinct.values(), key=lambda m: -m.level)  # stable: first logged first within a level
    first = ordered[0]
    text = first.text if len(first.text) <= SUMMARY_LIMIT else first.text[: SUMMARY_LIMIT - 3] + "..."
    more = f" (+{len(ordered) - 1} more)" if len(ordered) > 1 else ""
    return f"{label}: {library} {first.severity}: {text}{more}"


install()


# --- native output on file descriptor 2 (LiteRT, LibRaw, TensorFlow's converter) -------------------------

#: Held while file descriptor 2 points elsewhere. Native code writes to the descriptor, not to
#: ``sys.stderr``, so the redirection is process-wide: two threads redirecting at once would each save the
#: other's capture file and one would "restore" it for good (every later log line lost), and a log line
#: written meanwhile would vanish. Redirections therefore take turns, and the daemon's log handler takes this
#: lock too, so its lines wait out a redirection instead of going into the capture.
STDERR_LOCK = threading.RLock()
#: How deep the thread holding :data:`STDERR_LOCK` is in :func:`capture_native_stderr` (only that thread
#: touches it).
_quiet_depth = 0
#: At most this much captured native output is kept for the debug log.
_CAPTURE_LIMIT = 64 * 1024


@dataclass
class NativeOutput:
    """What native code wrote on file descriptor 2 during a :func:`capture_native_stderr` block (set on
    exit)."""

    text: str = ""


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[NativeOutput]:
    """Capture native messages on file descriptor 2 (LiteRT prints dozens of lines when it creates a
    CompiledModel, and more when it destroys one) and log them at debug level instead.

    Nothing may log from inside the block: fd 2 is the capture file there. Blocks nest; only the outermost
    redirects, captures and logs (an inner one's ``text`` stays empty). The capture is logged after fd 2 is
    back and the lock released, so a log handler that waits for the lock cannot deadlock with it.
    """
    global _quiet_depth
    output = NativeOutput()
    try:
        with STDERR_LOCK:
            if _quiet_depth:
                _quiet_depth += 1
                try:
                    yield output
                finally:
                    _quiet_depth -= 1
                return
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all: nothing to silence
                yield output
                return
            try:
                capture = _capture_file()
                try:
                    os.dup2(capture.fileno(), 2)
                    _quiet_depth = 1
                    try:
                        yield output
                    finally:
                        _quiet_depth = 0
                        os.dup2(saved, 2)
                finally:
                    output.text = _read_capture(capture)
                    capture.close()
            finally:
                os.close(saved)
    finally:
        for line in output.text.splitlines():
            if line.strip():
                log.debug("native: %s", line.rstrip())


def _capture_file() -> IO[bytes]:
    try:
        return tempfile.TemporaryFile(prefix="musiqd-native-")
    except OSError:  # no writable temp folder: silence without keeping the text
        return Path(os.devnull).open("w+b")


def _read_capture(capture: IO[bytes]) -> str:
    try:
        capture.seek(0)
        return capture.read(_CAPTURE_LIMIT).decode("utf-8", "replace")
    except OSError:
        return ""
