"""File names <-> database text, losslessly.

POSIX file names are bytes; databases want valid UTF-8 text. ``encode_path`` keeps UTF-8 names as they
are, percent-escapes every byte that is not valid UTF-8 as ``%XX``, and escapes ``%`` itself as ``%25``,
so that :func:`decode_path` restores the exact original name (and ``--under`` prefixes match on the
encoded form).
"""

from __future__ import annotations

import os


def encode_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if "%" not in text and text.isascii():
        return text
    raw = os.fsencode(text)
    out: list[str] = []
    i = 0
    while i < len(raw):
        # Decode the longest valid UTF-8 run, escape one bad byte, go on.
        try:
            out.append(raw[i:].decode("utf-8").replace("%", "%25"))
            break
        except UnicodeDecodeError as exc:
            good = raw[i : i + exc.start].decode("utf-8")
            out.append(good.replace("%", "%25"))
            out.append(f"%{raw[i + exc.start]:02X}")
            i += exc.start + 1
    return "".join(out)


def decode_path(text: str) -> str:
    """The file name as ``str`` (undecodable bytes as surrogate escapes, like ``os.fsdecode``)."""
    if "%" not in text:  # the common case, and the hot path of a million-row export
        return text
    data = bytearray()
    i = 0
    encoded = text.encode("utf-8")
    while i < len(encoded):
        if encoded[i] == 0x25 and _is_hex(encoded[i + 1 : i + 3]):
            data.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            data.append(encoded[i])
            i += 1
    return os.fsdecode(bytes(data))


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
