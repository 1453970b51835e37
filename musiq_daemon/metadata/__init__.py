"""Writing scores into photo metadata: safe file replacement, content hashes and the metadata writers."""

# Before any module here touches exiv2: libexiv2's log messages go to the photo they concern, or to the
# debug log, never raw to stderr.
from musiq_daemon import native_log as _native_log  # noqa: F401
