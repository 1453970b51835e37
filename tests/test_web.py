"""`musiqd serve`: the gallery's pages through Starlette's test client, and in a real browser (Playwright
driving the system's Chromium) against the real server process."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from imagegen import camera_exif, scene
from PIL import Image, ImageFilter

MUSIQD = [sys.executable, "-m", "musiq_daemon"]
START = datetime(2024, 5, 1, 10, 0, 1)


def run(args: list[str], env: dict[str, str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == rc and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> dict[str, str]:
    """As conftest's ``env``, for the whole module (the library is scored once)."""
    home = tmp_path_factory.mktemp("web-env")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
    return {
        **clean, "MUSIQD_DATA_DIR": str(home / "data"), "MUSIQD_MODEL_DIR": str(models_root),
        "XDG_CONFIG_HOME": str(home / "no-config"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> tuple[Path, str, dict[str, float]]:
    """Twelve scored photos (a burst of four among them, culled): (folder, index path, score by name)."""
    folder = tmp_path_factory.mktemp("library")
    base = Image.fromarray(scene(900, 600, seed=3))
    for i, radius in enumerate((0, 1, 3, 6)):
        frame = base.filter(ImageFilter.GaussianBlur(radius)) if radius else base
        frame.save(
            folder / f"BURST_{i}.JPG", quality=90, exif=camera_exif(taken=START + timedelta(seconds=i))
        )
    for i in range(8):
        image = Image.fromarray(scene(900, 600, seed=10 + i)).rotate(45 * i)
        image.save(
            folder / f"IMG_{i:02d}.JPG",
            quality=60 + 4 * i,
            exif=camera_exif(taken=START + timedelta(hours=i + 1)),
        )
    index = str(tmp_path_factory.mktemp("index") / "index.sqlite3")
    scored = run(["score", str(folder), "--json", "--db", index, "--variant", "fp32"], env)
    scores = {Path(r["path"]).name: r["score"] for r in map(json.loads, scored.stdout.splitlines())}
    run(["cull", str(folder), "--db", index], env)
    return folder, index, scores


@pytest.fixture
def client(
    library: tuple[Path, str, dict[str, float]],
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[object]:
    from starlette.testclient import TestClient

    from musiq_daemon.web.app import create_app

    monkeypatch.setenv("MUSIQD_MODEL_DIR", env["MUSIQD_MODEL_DIR"])
    with TestClient(create_app(library[1], thumbs=tmp_path / "thumbs")) as test_client:
        yield test_client


def tiles(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="photo-(\d+)"', html)]


def names(html: str) -> list[str]:
    return re.findall(r'<span class="name">([^<]+)</span>', html)


def test_gallery_sorted_by_score_with_filters_and_paging(
    client: object, library: tuple[Path, str, dict[str, float]]
) -> None:
    _, _, scores = library
    best_first = sorted(scores, key=lambda n: -scores[n])
    page = client.get("/")  # type: ignore[attr-defined]
    assert page.status_code == 200 and names(page.text)[0] == best_first[0]
    assert names(page.text) == best_first and "12 photos, page 1 of 1" in page.text
    assert "page 1." in client.get("/?under=/").text  # type: ignore[attr-defined]  # no total: no fast count
    worst = client.get("/?sort=score%2B").text  # type: ignore[attr-defined]
    assert names(worst) == best_first[::-1]
    low, high = sorted(scores.values())[3], sorted(scores.values())[8]
    ranged = names(client.get(f"/?min={low}&max={high}").text)  # type: ignore[attr-defined]
    assert ranged and all(low <= scores[n] <= high for n in ranged) and len(ranged) == 6
    paged = client.get("/?per=5&page=2").text  # type: ignore[attr-defined]
    assert names(paged) == best_first[5:10] and 'rel="prev"' in paged and 'rel="next"' in paged
    # Following the links: next pages start after the last photo shown, previous ones end before the first.
    url, seen = "/?per=4", []
    for _ in range(3):
        html = client.get(url).text  # type: ignore[attr-defined]
        seen.append(names(html))
        found = re.search(r'rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
    assert seen == [best_first[0:4], best_first[4:8], best_first[8:12]] and url == ""
    back = re.search(r'rel="prev" href="([^"]+)"', html)
    assert back is not None and "before=" in back.group(1)
    previous = client.get(back.group(1).replace("&amp;", "&")).text  # type: ignore[attr-defined]
    assert names(previous) == best_first[4:8]
    culled = names(client.get("/?best=1").text)  # type: ignore[attr-defined]
    burst_best = max((n for n in scores if n.startswith("BURST")), key=lambda n: scores[n])
    assert sorted(culled) == sorted([n for n in scores if not n.startswith("BURST")] + [burst_best])
    # Each tile of a burst says so; the best one says it is the best.
    badge = r'<span class="burst( best)?"[^>]*>[^<]*</span><span class="name">([^<]+)<'
    marked = {name: bool(best) for best, name in re.findall(badge, page.text)}
    assert marked == {n: n == burst_best for n in scores if n.startswith("BURST")}
    newest = names(client.get("/?sort=date").text)  # type: ignore[attr-defined]
    assert newest[0] == "IMG_07.JPG"
    for bad in (
        "/?min=abc",
        "/?page=0",
        "/?sort=size",
        "/?since=yesterday",
        "/?model=nope",
        "/?after=x",
        "/?sort=date&after=3.1:4",
    ):
        response = client.get(bad)  # type: ignore[attr-defined]
        assert response.status_code == 400 and "Traceback" not in response.text, bad


def test_thumbnails_are_small_jpegs_and_the_photo_page_shows_everything(
    client: object, library: tuple[Path, str, dict[str, float]]
) -> None:
    folder, _, scores = library
    originals = {p.name: p.read_bytes() for p in folder.iterdir()}
    ids = tiles(client.get("/").text)  # type: ignore[attr-defined]
    for photo_id in ids:
        thumb = client.get(f"/thumb/{photo_id}.jpg")  # type: ignore[attr-defined]
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert len(thumb.content) < 300_000
        with Image.open(io.BytesIO(thumb.content)) as image:
            assert max(image.size) <= 400
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == originals  # nothing written to the photos
    best_burst = max((n for n in scores if n.startswith("BURST")), key=lambda n: scores[n])
    page = client.get("/?best=1").text  # type: ignore[attr-defined]
    photo_id = tiles(page)[names(page).index(best_burst)]
    detail = client.get(f"/photo/{photo_id}").text  # type: ignore[attr-defined]
    assert str(folder / best_burst) in detail and f"{scores[best_burst]:.2f}" in detail and "koniq" in detail
    assert "Burst (4 photos)" in detail and detail.count('class="tile"') == 4 and " best</span>" in detail
    assert client.get("/photo/999999").status_code == 404  # type: ignore[attr-defined]
    assert client.get("/thumb/999999.jpg").status_code == 404  # type: ignore[attr-defined]


def test_a_token_guards_every_page(library: tuple[Path, str, dict[str, float]], tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from musiq_daemon.web.app import create_app

    with TestClient(create_app(library[1], thumbs=tmp_path, token="s3cret")) as guarded:
        assert guarded.get("/").status_code == 401 and guarded.get("/thumb/1.jpg").status_code == 401
        assert guarded.get("/?token=wrong").status_code == 401
        assert guarded.get("/?token=s3cret").status_code == 200  # and a cookie for what follows
        assert guarded.get("/photo/1").status_code in (200, 404)
        guarded.cookies.clear()
        assert guarded.get("/").status_code == 401
        assert guarded.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_serve_refuses_other_addresses_without_a_token(
    env: dict[str, str], library: tuple[Path, str, dict[str, float]]
) -> None:
    refused = run(["serve", "--host", "0.0.0.0", "--db", library[1]], env, rc=2)
    assert "--token" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    missing = run(["serve", "--db", str(Path(library[1]).parent / "none.sqlite3")], env, rc=8)
    assert "no index at" in missing.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_gallery_in_a_real_browser(
    env: dict[str, str], library: tuple[Path, str, dict[str, float]], tmp_path: Path
) -> None:
    """Headless Chromium against the real server: it renders the gallery, sorts, filters, opens a photo
    from the keyboard; no request fails and the console stays clean. A screenshot is kept."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no system Chromium (Debian: apt install chromium; .ci/run installs it)")
    _, index, scores = library
    port = free_port()
    server = subprocess.Popen(
        [*MUSIQD, "serve", "--port", str(port), "--db", index, "--thumbs", str(tmp_path / "thumbs")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the server did not start") from None
                time.sleep(0.2)
        failures: list[str] = []
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: failures.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("requestfailed", lambda r: failures.append(f"failed: {r.url}"))
            page.on(
                "response", lambda r: failures.append(f"{r.status}: {r.url}") if r.status >= 400 else None
            )
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            best = max(scores, key=lambda n: scores[n])
            assert page.locator(".tile .name").first.inner_text() == best
            assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
            page.select_option("select[name=sort]", "score+")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            assert page.locator(".tile .name").first.inner_text() == min(scores, key=lambda n: scores[n])
            page.fill("input[name=min]", "0")
            page.select_option("select[name=best]", "1")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            assert page.locator(".tile").count() == 9  # eight single photos and the best of the burst
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/photo/\d+"))
            page.wait_for_load_state("networkidle")
            assert "Scores" in page.content() and "koniq" in page.content()
            page.keyboard.press("Escape")
            page.wait_for_url(f"http://127.0.0.1:{port}/")
            browser.close()
        assert failures == [] and (tmp_path / "gallery.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(30)


def test_the_gallery_opens_on_the_configured_model(
    library: tuple[Path, str, dict[str, float]], tmp_path: Path
) -> None:
    """`musiqd serve` passes the first configured model: pages show its scores unless they name another."""
    from starlette.testclient import TestClient

    from musiq_daemon.errors import UsageError
    from musiq_daemon.web.app import create_app

    with TestClient(create_app(library[1], thumbs=tmp_path / "thumbs", model="ava")) as ava:
        page = ava.get("/").text
        assert "No photo matches." in page and 'title="scores of ava (1.0-10.0)"' in page
        assert names(ava.get("/?model=koniq").text)  # the koniq scores are there
    with pytest.raises(UsageError):
        create_app(library[1], thumbs=tmp_path / "thumbs", model="nope")
