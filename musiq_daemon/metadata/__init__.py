"""Writing scores into photo metadata: safe file replacement, content hashes and the metadata writers.

Importing the package loads nothing heavy: the modules that call libexiv2 (:mod:`.xmp`, :mod:`.writer`)
import :mod:`musiq_daemon.native_log` themselves, which routes its log messages before any call, and
:mod:`.policy` and :mod:`.safefile` stay cheap for commands that write no metadata.
"""
