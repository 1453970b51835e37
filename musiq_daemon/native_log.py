"""libexiv2's log messages: collected per photo and turned into one line that names it, never printed raw.

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
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

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
