"""Checkpoint download: resume after an interruption, sha256, and clear errors (loopback server only)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.errors import DownloadError
from musiq_daemon.model.fetch import download_checkpoint

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after: ClassVar[int | None] = None  # close the connection after this many body bytes (once)
    ranges_seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path != "/koniq_ckpt.npz":
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header:
            type(self).ranges_seen.append(header)
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.ranges_seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_after_interruption(tmp_path: Path, server: str) -> None:
    spec = load_catalogue().get("koniq")
    _Handler.cut_after = 300_000
    with pytest.raises(DownloadError, match="resume"):
        download_checkpoint(spec, tmp_path, url=f"{server}/koniq_ckpt.npz", timeout=5)
    part = tmp_path / "koniq_ckpt.npz.part"
    assert part.stat().st_size == 300_000
    seen: list[int] = []
    path, digest = download_checkpoint(
        spec, tmp_path, url=f"{server}/koniq_ckpt.npz", progress=lambda done, total: seen.append(done)
    )
    assert _Handler.ranges_seen == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD
    assert digest == hashlib.sha256(PAYLOAD).hexdigest()
    assert not part.exists() and seen[-1] == len(PAYLOAD)
    # A finished checkpoint is kept and not downloaded again.
    assert download_checkpoint(spec, tmp_path, url=f"{server}/missing") == (path, digest)


def test_http_error_and_offline_messages(tmp_path: Path, server: str) -> None:
    spec = load_catalogue().get("koniq")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_checkpoint(spec, tmp_path, url=f"{server}/nope.npz", timeout=5)
    assert "models convert --checkpoint" in str(info.value) and "\n" not in str(info.value)
    offline = replace(spec, url="http://127.0.0.1:9/koniq_ckpt.npz")  # nothing listens on the discard port
    with pytest.raises(DownloadError, match="offline") as info:
        download_checkpoint(offline, tmp_path, timeout=5)
    assert "models convert --checkpoint" in str(info.value)
