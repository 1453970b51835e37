"""Culling: bursts grouped by camera, capture time and perceptual similarity; the best-scored photo of each
listed by `musiqd query --best-of-burst`. Real JPEGs with camera EXIF, the real commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from imagegen import camera_exif, exiftool, scene
from PIL import Image, ImageFilter
from sqlalchemy import select, update
from test_metadata_write import record as score_record

from musiq_daemon.cull import Shot, best_of, camera_and_time, distance, group_bursts, perceptual_hash
from musiq_daemon.index.db import open_index
from musiq_daemon.index.models import Photo, Score

MUSIQD = [sys.executable, "-m", "musiq_daemon"]
START = datetime(2024, 5, 1, 10, 0, 1)
BEST = "MUSIQ|best-of-burst"
LEAF = "best-of-burst"


def save(
    image: Image.Image, path: Path, taken: datetime, *, model: str = "Canon EOS R5", quality: int = 92
) -> Path:
    exif = camera_exif(make=model.split()[0], model=model, taken=taken)
    image.save(path, quality=quality, exif=exif)
    return path


@pytest.fixture(scope="module")
def shoot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """Five shots of one scene a second apart (sharp, blurred, more blurred, heavily recompressed, slightly
    cropped) and three unrelated photos: one from the same camera in the middle of the burst, one from the
    same camera five minutes later, one from another camera at the same time."""
    folder = tmp_path_factory.mktemp("shoot")
    base = Image.fromarray(scene(1200, 800, seed=3))
    width, height = base.size
    frames = [
        base,
        base.filter(ImageFilter.GaussianBlur(2)),
        base.filter(ImageFilter.GaussianBlur(6)),
        base,
        base.crop((36, 24, width - 36, height - 24)).resize((width, height)),
    ]
    burst = [
        save(frame, folder / f"IMG_{i:04d}.JPG", START + timedelta(seconds=i), quality=8 if i == 3 else 92)
        for i, frame in enumerate(frames)
    ]
    other = Image.fromarray(scene(1200, 800, seed=5)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    upside = Image.fromarray(scene(1200, 800, seed=9)).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    turned = Image.fromarray(scene(800, 1200, seed=11)).transpose(Image.Transpose.ROTATE_90)
    unrelated = [
        save(other, folder / "IMG_0100.JPG", START + timedelta(seconds=2, milliseconds=500)),
        save(upside, folder / "IMG_0200.JPG", START + timedelta(minutes=5)),
        save(turned, folder / "DSC_0001.JPG", START + timedelta(seconds=2), model="NIKON Z 6"),
    ]
    return folder, burst, unrelated


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(MUSIQD + args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result


def test_one_burst_of_five_and_the_best_of_it(
    env: dict[str, str], shoot: tuple[Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    folder, burst, unrelated = shoot
    index = str(tmp_path / "index.sqlite3")
    scored = run(["score", str(folder), "--json", "--db", index, "--variant", "fp32"], env)
    scores = {Path(r["path"]).name: r["score"] for r in map(json.loads, scored.stdout.splitlines())}
    culled = run(["cull", str(folder), "--json", "--db", index], env)
    (group,) = [json.loads(line) for line in culled.stdout.splitlines()]
    assert sorted(Path(p["path"]).name for p in group["photos"]) == sorted(p.name for p in burst)
    assert group["camera"] == "Canon EOS R5" and group["model"] == "koniq"
    best = max(burst, key=lambda p: scores[p.name])
    assert group["best"] == str(best)
    assert "1 burst of 5 photos among 8; 3 photos stand alone" in culled.stderr

    listed = json.loads(run(["query", "--best-of-burst", "--format", "json", "--db", index], env).stdout)
    assert sorted(Path(r["path"]).name for r in listed) == sorted([best.name] + [p.name for p in unrelated])
    every = json.loads(run(["query", "--format", "json", "--db", index], env).stdout)
    bursts = {Path(r["path"]).name: r["burst"] for r in every}
    assert {bursts[p.name] for p in burst} == {group["burst"]}
    assert all(bursts[p.name] is None for p in unrelated)

    table = run(["cull", str(folder), "--db", index], env).stdout  # again: the same grouping, as text
    first = table.splitlines()[0]
    assert first.startswith("burst ") and ": 5 photos, Canon EOS R5, 2024-05-01" in first
    assert sum(line.startswith("  best ") for line in table.splitlines()) == 1


def keywords(path: Path) -> list[str]:
    """lr:hierarchicalSubject as exiftool reads it (the independent reader)."""
    out = json.loads(exiftool("-j", "-XMP-lr:HierarchicalSubject", path))[0].get("HierarchicalSubject", [])
    return [str(k) for k in out] if isinstance(out, list) else [str(out)]


def scored_copy(shoot: Path, tmp_path: Path, env: dict[str, str], *options: str) -> tuple[Path, str]:
    """A copy of the shoot, scored into a new index (with ``options``): (folder, index)."""
    folder = tmp_path / "shoot"
    shutil.copytree(shoot, folder)
    index = str(tmp_path / "index.sqlite3")
    run(["score", str(folder), *options, "--db", index, "--variant", "fp32"], env)
    return folder, index


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")
def test_cull_write_marks_the_best_and_moves_the_mark_when_the_best_changes(
    env: dict[str, str], shoot: tuple[Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    folder, index = scored_copy(shoot[0], tmp_path, env, "--write")
    hint = run(["cull", str(folder), "--db", index], env).stderr
    assert "add --write to mark each burst's best photo" in hint
    frames = sorted(folder.glob("IMG_000*.JPG"))
    assert all(BEST not in keywords(p) for p in folder.iterdir())  # grouping alone writes nothing

    culled = run(["cull", str(folder), "--write", "--json", "--db", index], env)
    best = Path(json.loads(culled.stdout)["best"])
    assert "best-of-burst keyword: 1 marked as the best of their burst, 0 no longer marked" in culled.stderr
    assert [p.name for p in folder.iterdir() if BEST in keywords(p)] == [best.name]
    assert any(k.startswith("MUSIQ|koniq|") for k in keywords(best))  # the score's keyword stays
    untouched = {p: p.read_bytes() for p in folder.iterdir() if p != best}
    summary = run(["stats", "--db", index], env).stdout
    assert "bursts: 1 of 5 photos (musiqd cull); 1 marked best-of-burst" in summary

    again = run(["cull", str(folder), "--write", "--db", index], env)  # nothing pending: nothing written
    assert "0 marked as the best of their burst, 0 no longer marked" in again.stderr
    assert all(p.read_bytes() == data for p, data in untouched.items())

    # Another frame becomes the best (as after a rescore with a better model): the mark moves.
    runner = next(p for p in frames if p != best)
    set_score(index, runner, 9.0)
    db = open_index(index)
    try:
        with db.session() as session:
            # The index still knows the marked photo as it is now: musiqd's own write kept its features.
            marked = session.scalars(select(Photo).where(Photo.rel_path.endswith(best.name))).one()
            assert (marked.size, marked.mtime_ns) == (best.stat().st_size, best.stat().st_mtime_ns)
            assert marked.phash is not None and marked.best_keyword == "added"
    finally:
        db.close()
    moved = run(["cull", str(folder), "--write", "--db", index], env)
    assert "1 marked as the best of their burst, 1 no longer marked" in moved.stderr
    assert [p.name for p in folder.iterdir() if BEST in keywords(p)] == [runner.name]

    # The owner takes the keyword away from the new best; the best moves away and back: musiqd never puts
    # it back (the keyword is the owner's from the moment musiqd finds it changed).
    exiftool(
        "-q",
        "-overwrite_original",
        f"-XMP-dc:Subject-={LEAF}",
        f"-XMP-lr:HierarchicalSubject-={BEST}",
        runner,
    )
    owned = runner.read_bytes()
    set_score(index, best, 10.0)
    away = run(["cull", str(folder), "--write", "--db", index], env)
    assert "1 marked as the best of their burst, 0 no longer marked, 1 left as they were" in away.stderr
    set_score(index, runner, 11.0)
    back = run(["cull", str(folder), "--write", "--db", index], env)
    assert "0 marked as the best of their burst, 1 no longer marked" in back.stderr
    assert runner.read_bytes() == owned and BEST not in keywords(runner)
    assert BEST not in keywords(best)

    # A keyword the owner set by hand on a frame that then becomes the best, and then no longer is: it is
    # the owner's, and stays.
    hand = next(p for p in frames if p not in (best, runner))
    exiftool(
        "-q", "-overwrite_original", f"-XMP-dc:Subject+={LEAF}", f"-XMP-lr:HierarchicalSubject+={BEST}", hand
    )
    handmade = hand.read_bytes()
    set_score(index, hand, 12.0)
    took = run(["cull", str(folder), "--write", "--db", index], env)
    assert "0 marked as the best of their burst, 0 no longer marked, 1 left as they were" in took.stderr
    set_score(index, hand, 0.5)
    gave = run(
        ["cull", str(folder), "--write", "--db", index], env
    )  # the runner is the best again, its keyword the owner's
    assert "0 marked as the best of their burst, 0 no longer marked" in gave.stderr
    assert hand.read_bytes() == handmade and BEST in keywords(hand)


def set_score(index: str, photo: Path, score: float) -> None:
    """Give ``photo`` another score in the index (as a rescore with another model version would)."""
    db = open_index(index)
    try:
        with db.session() as session:
            row = session.scalars(select(Photo).where(Photo.rel_path.endswith(photo.name))).one()
            session.execute(update(Score).where(Score.photo_id == row.id).values(score=score))
    finally:
        db.close()


def test_cull_write_in_index_only_mode_writes_nothing(
    env: dict[str, str], shoot: tuple[Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    folder, index = scored_copy(shoot[0], tmp_path, env)
    before = {p: p.read_bytes() for p in folder.iterdir()}
    result = run(["cull", str(folder), "--write", "--write-mode", "index-only", "--db", index], env)
    assert "write mode index-only: no keyword written" in result.stderr
    assert {p: p.read_bytes() for p in folder.iterdir()} == before


def test_cull_refuses_bad_options_and_a_missing_index(env: dict[str, str], tmp_path: Path) -> None:
    for args, message in (
        (["--gap", "0"], "--gap must be a positive number"),
        (["--distance", "64"], "--distance must be between 0 and 63"),
        ([], "no index at"),
    ):
        result = subprocess.run(
            [*MUSIQD, "cull", *args, "--db", str(tmp_path / "none.sqlite3")],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode in (2, 8) and message in result.stderr and "Traceback" not in result.stderr


def test_the_hash_sees_the_same_scene_through_blur_recompression_and_crops(
    shoot: tuple[Path, list[Path], list[Path]],
) -> None:
    _, burst, unrelated = shoot
    hashes = [perceptual_hash(p) for p in burst]
    others = [perceptual_hash(p) for p in unrelated]
    assert max(distance(a, b) for a in hashes for b in hashes) <= 10
    assert min(distance(a, b) for a in hashes for b in others) >= 24
    assert camera_and_time(burst[0])[0] == "Canon EOS R5" and camera_and_time(unrelated[2])[0] == "NIKON Z 6"
    assert camera_and_time(burst[1])[1] == camera_and_time(burst[0])[1] + 1000  # type: ignore[operator]


def shot(photo_id: int, seconds: float, phash: int, camera: str = "cam", score: float | None = 3.0) -> Shot:
    return Shot(photo_id, Path(f"/p/{photo_id}.jpg"), camera, round(seconds * 1000), phash, score)


def test_grouping_rules() -> None:
    a, b = 0, (1 << 40) - 1  # 40 bits apart
    shots = [
        shot(1, 0.0, a), shot(2, 1.0, b), shot(3, 1.5, a | 1), shot(4, 2.5, b),  # two interleaved bursts
        shot(5, 10.0, a),  # too late for the first
        shot(6, 0.5, a, camera="other"),  # another camera
        Shot(7, Path("/p/7.jpg"), "cam", None, a, 3.0),  # no capture time: never grouped
    ]  # fmt: skip
    groups = group_bursts(shots, gap_s=3.0, max_distance=5)
    assert [[s.photo_id for s in g] for g in groups] == [[1, 3], [2, 4]]
    assert group_bursts(shots, gap_s=20.0, max_distance=5)[0] == [shots[0], shots[2], shots[4]]
    assert best_of([shot(1, 0, a, score=3.0), shot(2, 1, a, score=4.0), shot(3, 2, a, score=4.0)]) == shot(
        2, 1, a, score=4.0
    )
    assert best_of([shot(1, 0, a, score=None)]) is None


def test_a_new_version_of_a_photo_is_read_again(tmp_path: Path) -> None:
    """The features are cached per file version: a rewritten photo gets its hash read again."""
    from musiq_daemon.index.bursts import load_shots
    from musiq_daemon.index.db import open_index
    from musiq_daemon.index.records import upsert_photo

    path = save(Image.fromarray(scene(400, 300, seed=1)), tmp_path / "a.jpg", START)
    db = open_index(str(tmp_path / "index.sqlite3"))
    try:
        with db.session() as session:
            upsert_photo(session, path, roots=[tmp_path])
            (first,) = load_shots(session, "koniq")
        save(Image.fromarray(scene(400, 300, seed=1)).transpose(Image.Transpose.FLIP_TOP_BOTTOM), path, START)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        with db.session() as session:
            upsert_photo(session, path, roots=[tmp_path])
            (second,) = load_shots(session, "koniq")
    finally:
        db.close()
    assert first.phash is not None and second.phash is not None and distance(first.phash, second.phash) > 20


def test_stale_bursts_are_regrouped_when_the_best_vanishes_or_a_rescore_changes_it(
    env: dict[str, str], shoot: tuple[Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    """What the daemon does every few seconds (cull_new): a burst whose best photo vanished, or one of
    whose photos was scored again (a new model version, no file change), is regrouped; query lists the
    new best."""
    from musiq_daemon.index.bursts import cull_new
    from musiq_daemon.index.models import Burst
    from musiq_daemon.index.records import record_results

    index = scored_copy(shoot[0], tmp_path, env)[1]
    db = open_index(index)

    def cull() -> list[tuple[int, int | None]]:
        with db.session() as session:
            rounds = 0  # as the daemon does: again while a round read or regrouped photos
            while cull_new(session, "koniq", gap_s=3.0, max_distance=18)[0]:
                rounds += 1
                assert rounds < 20, "culling does not settle"
            return [(b.size, b.best_photo_id) for b in session.scalars(select(Burst))]

    def best_listed() -> set[str]:
        rows = json.loads(run(["query", "--best-of-burst", "--format", "json", "--db", index], env).stdout)
        return {Path(r["path"]).name for r in rows if r["burst"] is not None}

    try:
        ((size, first_best),) = cull()
        assert size == 5
        assert cull() == [(5, first_best)]  # nothing stale: the same burst
        with db.session() as session:
            ids = {p.rel_path.rsplit("/", 1)[-1]: p.id for p in session.scalars(select(Photo))}
            runner = next(i for name, i in ids.items() if name.startswith("IMG_000") and i != first_best)
            photo = session.get(Photo, runner)
            assert photo is not None
            path = Path(photo.root) / photo.rel_path
            # Scored again (a new model version) the way every scoring is recorded; the file is unchanged.
            latest = session.scalars(select(Score).where(Score.photo_id == runner)).one()
            record = replace(
                score_record("koniq", 9.0, version="newversion01"),
                variant=latest.variant, resolution_policy=latest.resolution_policy,
                stored_size=(1200, 800), scored_at=datetime.now(UTC).isoformat(),
            )  # fmt: skip
            record_results(session, path, [record], None, roots=[Path(photo.root)])
        assert cull() == [(5, runner)]
        names = {i: name for name, i in ids.items()}
        assert best_listed() == {names[runner]}

        with db.session() as session:
            session.execute(update(Photo).where(Photo.id == runner).values(missing_since=datetime.now(UTC)))
        ((size, best),) = cull()
        assert size == 4 and best == first_best
        assert best_listed() == {names[first_best]}
        for _ in range(3):  # settled: nothing stale any more
            assert cull() == [(4, first_best)]
    finally:
        db.close()


def test_camera_raw_formats_pillow_cannot_open_are_grouped_too(tmp_path: Path) -> None:
    """Burst shooters shoot RAW, much of it in formats Pillow cannot open (CR3, RAF, ORF, RW2): their
    camera and capture time are read by the metadata library. Here: TIFF-structured RAWs with the ORF
    signature (the layout of Olympus files), made from one DNG per frame."""
    from imagegen import make_dng

    from musiq_daemon.metadata.capture import Capture, capture_time, read_capture

    frames = []
    for i in range(3):
        dng = make_dng(tmp_path / f"frame{i}.dng", 320, 240, preview=(160, 120))
        exiftool(
            "-q", "-overwrite_original", "-Make=OLYMPUS CORPORATION", "-Model=E-M1MarkIII",
            f"-DateTimeOriginal=2024:06:01 18:30:0{i}", "-SubSecTimeOriginal=37",
            "-OffsetTimeOriginal=+02:00", dng,
        )  # fmt: skip
        raw = tmp_path / f"P{i:07d}.ORF"
        raw.write_bytes(b"IIRO" + dng.read_bytes()[4:])
        with pytest.raises(OSError):
            Image.open(raw)  # Pillow cannot: the metadata library reads it
        frames.append(raw)
    capture = read_capture(frames[0])
    assert capture.camera == "OLYMPUS CORPORATION E-M1MarkIII"
    assert capture.taken == datetime(2024, 6, 1, 16, 30, 0, 370000, tzinfo=UTC)
    assert capture_time(frames[0]) == datetime(2024, 6, 1, 16, 30, 0, tzinfo=UTC)
    shots = [Shot(i, p, *camera_and_time(p), perceptual_hash(p), 3.0 + i) for i, p in enumerate(frames)]
    assert [s.taken_ms for s in shots] == [shots[0].taken_ms + 1000 * i for i in range(3)]  # type: ignore[operator]
    (burst,) = group_bursts(shots)
    assert [s.path for s in burst] == frames

    unreadable = tmp_path / "broken.ORF"
    unreadable.write_bytes(b"IIRO" + b"\0" * 100)
    assert read_capture(unreadable) == read_capture(tmp_path / "missing.ORF") == Capture(None, None)


def test_pending_keywords_page_through_bursts_and_unmarks(tmp_path: Path) -> None:
    """The photos whose keyword may change come a page at a time, through the bursts still to do and the
    photos to unmark: a burst whose best vanished, or a photo left out by the paths, never stops the pages."""
    from musiq_daemon.index.bursts import pending_keywords, record_bursts
    from musiq_daemon.index.models import Burst

    db = open_index(str(tmp_path / "index.sqlite3"))
    now = datetime.now(UTC)
    try:
        with db.session() as session:
            photos = [
                Photo(root="/r", rel_path=f"{'b' if i % 2 else 'a'}/{i}.jpg", size=1, mtime_ns=1,
                      first_seen=now, last_seen=now, missing_since=now if i == 4 else None)
                for i in range(20)
            ]  # fmt: skip
            session.add_all(photos)
            session.flush()
            shots = [Shot(p.id, Path(p.rel_path), "cam", i * 1000, 0, float(i)) for i, p in enumerate(photos)]
            pairs = [shots[i : i + 2] for i in range(0, 20, 2)]  # ten bursts of two: the odd photo is best
            record_bursts(session, shots, pairs, "koniq")

        def every(best: bool, where: object = None) -> list[int]:
            seen, after = [], 0
            while after is not None:
                with db.session() as session:
                    page, after = pending_keywords(session, best=best, where=where, after=after, limit=3)  # type: ignore[arg-type]
                    seen += [p.photo.id for p in page]
            return seen

        odd = [p.id for i, p in enumerate(photos) if i % 2]
        assert every(True) == odd  # photo 4 is missing, but it is no best anyway
        with db.session() as session:  # the daemon waits for a burst to stop changing before it marks it
            unsettled, _ = pending_keywords(session, best=True, settled_before=now - timedelta(seconds=10))
            assert unsettled == []
        assert every(True, Photo.rel_path.startswith("a/")) == []
        assert every(False) == []
        with db.session() as session:
            session.execute(update(Photo).where(Photo.id.in_(odd)).values(best_keyword="added"))
            session.execute(update(Burst).values(keyword_done=True))
            reshuffled = [[shots[i], shots[i + 1]] for i in range(0, 20, 2)]
            for group in reshuffled:
                group[1] = replace(group[1], score=-1.0)  # the even photo is now the best
            record_bursts(session, shots, reshuffled, "koniq")
            states = dict(session.execute(select(Photo.id, Photo.best_keyword)).all())
        assert [states[i] for i in odd] == ["unmark"] * 10
        assert every(False) == odd
        assert every(True) == [p.id for i, p in enumerate(photos) if not i % 2 and i != 4]  # 4 vanished
    finally:
        db.close()


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")
def test_culling_one_folder_regroups_a_burst_that_spans_two_whole(
    env: dict[str, str], shoot: tuple[Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    """A burst copied into two folders: `musiqd cull FOLDER` regroups it whole, never cuts it in two (the
    other half would keep a best that is no longer its own, and the keyword would be lost or doubled)."""
    folder = tmp_path / "shoot"
    for i, frame in enumerate(shoot[1]):
        (folder / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy2(frame, folder / ("a" if i % 2 else "b") / frame.name)
    index = str(tmp_path / "index.sqlite3")
    run(["score", str(folder), "--write", "--db", index, "--variant", "fp32"], env)
    whole = json.loads(run(["cull", str(folder), "--json", "--db", index], env).stdout)
    part = json.loads(run(["cull", str(folder / "a"), "--json", "--write", "--db", index], env).stdout)
    assert len(part["photos"]) == len(whole["photos"]) == 5 and part["best"] == whole["best"]
    marked = [p for p in folder.rglob("*.JPG") if BEST in keywords(p)]
    assert marked == [Path(whole["best"])]
    again = json.loads(run(["cull", str(folder / "b"), "--json", "--write", "--db", index], env).stdout)
    assert (
        again["best"] == whole["best"] and [p for p in folder.rglob("*.JPG") if BEST in keywords(p)] == marked
    )
