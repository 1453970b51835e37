"""Downloading official MUSIQ checkpoints, resumable, with their sha256 recorded."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from musiq_daemon.catalogue import ModelSpec
from musiq_daemon.errors import DownloadError
from musiq_daemon.model.store import sha256_file

#: Progress callback: (bytes so far, total bytes or None).
Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20


def download_checkpoint(
    spec: ModelSpec,
    dest_dir: Path,
    *,
    url: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> tuple[Path, str]:
    """Download ``spec``'s checkpoint into ``dest_dir``; return (path, sha256).

    An interrupted download leaves ``<file>.part`` behind and the next call resumes it with an HTTP
    Range request. A finished file is kept (so a model can be re-converted offline) and not fetched again.
    """
    url = url or spec.url
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.file
    if final.is_file():
        return final, sha256_file(final)
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "musiqd"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    how_to = (
        f"download {url} elsewhere and run "
        f"'musiqd models convert --checkpoint PATH/{spec.file} --id {spec.id}'"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if have and status != 206:  # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with part.open("ab" if have else "wb") as out:
                done = have
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
    except http.client.HTTPException:
        raise DownloadError(
            f"download of {spec.file} stopped early; run the same command again to resume"
        ) from None
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {spec.file}: HTTP {exc.code} from {url}; {how_to}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {spec.file} ({reason}); offline? {how_to}") from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"download of {spec.file} stopped early; run the same command again to resume")
    part.replace(final)
    return final, sha256_file(final)
