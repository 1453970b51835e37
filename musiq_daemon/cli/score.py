"""``musiqd score``: score photos and print the results (writes nothing)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import typer

from musiq_daemon.api import ScoreFailure, Scorer, ScoreRecord
from musiq_daemon.decode import SUPPORTED_SUFFIXES
from musiq_daemon.errors import UsageError
from musiq_daemon.preprocess import ResolutionPolicy


def iter_photos(paths: list[Path]) -> Iterator[Path]:
    """Files as given (any suffix: the decoder says if it cannot read one); directories walked for photos."""
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                # Hidden folders and NAS metadata folders hold thumbnails, not photos.
                dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "@", "#")))
                for name in sorted(filenames):
                    if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES:
                        yield Path(dirpath) / name
        elif path.exists() or path.is_symlink():
            yield path
        else:
            raise UsageError(f"{path} does not exist")


def score(
    paths: list[Path] = typer.Argument(..., help="Photos or folders (searched recursively)."),
    model: str = typer.Option(None, "--model", "-m", help="Model id (default: koniq)."),
    variant: str = typer.Option(None, "--variant", help="fp32, fp16 or dynamic-int8 (default)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if usable, else CPU), cpu or gpu."),
    threads: int = typer.Option(2, "--threads", min=1, help="CPU threads for inference."),
    policy: str = typer.Option(None, "--resolution", help="'full' or 'max_side=N' (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per photo (JSON lines)."),
) -> None:
    """Score photos with MUSIQ and print path, score, raw score, model, variant and device.

    Writes nothing. Exit code 1 when some photos could not be scored (each is reported on stderr).
    """
    resolution = ResolutionPolicy.parse(policy) if policy else None
    photos = list(iter_photos(paths))
    if not photos:
        raise UsageError("no photos found in the given paths")
    scorer = Scorer(model, variant, device=device, threads=threads, policy=resolution)
    failures = 0
    if not as_json:
        typer.echo(_HEADER)
    # Rows are printed as each photo finishes, so a long run shows progress (and can be piped).
    for result in scorer.score_many(photos):
        if isinstance(result, ScoreFailure):
            failures += 1
            typer.echo(f"musiqd: {result.error.message}", err=True)
        elif as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            typer.echo(_row(result))
    if failures:
        raise typer.Exit(1)


_HEADER = (
    f"{'score':>6} {'raw':>8}  {'model':<22} {'variant':<12} {'device':<6} {'tokens':>6} {'sec':>5}  path"
)


def _row(r: ScoreRecord) -> str:
    model = f"{r.model_id}@{r.model_version}"
    return (
        f"{r.score:>6.2f} {r.raw:>8.3f}  {model:<22} {r.variant:<12} {r.device:<6} {r.num_tokens:>6} "
        f"{r.duration:>5.2f}  {r.path or '-'}"
    )
