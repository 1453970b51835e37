"""``musiqd models``: list, fetch, convert and verify MUSIQ models."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.errors import UsageError
from musiq_daemon.paths import checkpoints_dir, models_dir

if TYPE_CHECKING:
    from rich.console import Console

# rich's tables and progress bars and the model store are imported inside the commands: every musiqd
# command loads this module, `musiqd --help` included.

app = typer.Typer(help="List, fetch, convert and verify MUSIQ models.", no_args_is_help=True)


@cache
def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def _variants(values: list[str] | None) -> list[str]:
    catalogue = load_catalogue()
    chosen = values or [catalogue.default_variant]
    if "all" in chosen:
        return list(catalogue.variants)
    return [catalogue.check_variant(v) for v in chosen]


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The catalogue, and which variants are installed (with their sizes)."""
    from rich.table import Table

    from musiq_daemon.model.store import list_installed

    catalogue = load_catalogue()
    installed = list_installed()
    by_id: dict[str, list[str]] = {}
    for m in installed:
        by_id.setdefault(m.spec.id, []).append(f"{m.variant} ({m.size_bytes / 1e6:.1f} MB)")
    if as_json:
        rows = [
            {
                "id": s.id,
                "title": s.title,
                "default": s.id == catalogue.default_model,
                "head": s.head,
                "scale": [s.scale_min, s.scale_max],
                "max_side": s.max_side,
                "installed": [
                    {"variant": m.variant, "path": str(m.path), "bytes": m.size_bytes, "version": m.version}
                    for m in installed
                    if m.spec.id == s.id
                ],
            }
            for s in catalogue.models.values()
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"MUSIQ models (installed in {models_dir()})")
    for col in ("id", "title", "scale", "default size", "installed"):
        table.add_column(col)
    for s in catalogue.models.values():
        name = s.id + (" (default)" if s.id == catalogue.default_model else "")
        size = "full" if s.max_side is None else f"max_side={s.max_side}"
        table.add_row(
            name, s.title, f"{s.scale_min:g}-{s.scale_max:g}", size, ", ".join(by_id.get(s.id, [])) or "-"
        )
    _console().print(table)


@app.command()
def fetch(
    model_id: str = typer.Argument(..., metavar="ID", help="Catalogue id: koniq, spaq, paq2piq or ava."),
    variant: list[str] = typer.Option(None, "--variant", help="fp32, fp16, dynamic-int8 (default) or all."),
    url: str = typer.Option(
        None, "--url", help="Download from this URL (a mirror) instead of the official one."
    ),
) -> None:
    """Download the official checkpoint (resumable), record its sha256, convert it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from musiq_daemon.model.fetch import download_checkpoint

    spec = load_catalogue().get(model_id)
    variants = _variants(variant)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(spec.file, total=None)
        path, digest = download_checkpoint(
            spec,
            checkpoints_dir(),
            url=url,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    _console(stderr=True).print(f"{path} sha256 {digest}")
    _convert(path, model_id, variants)


def _convert(checkpoint: Path, model_id: str, variants: list[str]) -> None:
    from musiq_daemon.model.store import install_from_checkpoint

    for m in install_from_checkpoint(
        checkpoint,
        model_id,
        variants,
        on_variant=lambda v: _console(stderr=True).print(f"converting {model_id} to {v} ..."),
    ):
        _console().print(
            f"installed {m.spec.id} {m.variant}: {m.path} ({m.size_bytes / 1e6:.1f} MB, version {m.version})"
        )


@app.command()
def convert(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An official *_ckpt.npz file."),
    model_id: str = typer.Option(
        None, "--id", help="Catalogue id (default: from the file name, e.g. koniq_ckpt.npz)."
    ),
    variant: list[str] = typer.Option(None, "--variant", help="fp32, fp16, dynamic-int8 (default) or all."),
) -> None:
    """Convert a checkpoint you already have into the model directory (needs the `convert` extra)."""
    catalogue = load_catalogue()
    if model_id is None:
        guess = [s.id for s in catalogue.models.values() if s.file == checkpoint.name]
        if not guess:
            raise UsageError(
                f"cannot tell which model {checkpoint.name} is: pass --id "
                f"(one of {', '.join(catalogue.models)})"
            )
        model_id = guess[0]
    _convert(checkpoint, model_id, _variants(variant))


@app.command()
def verify(
    model_id: str = typer.Argument(..., metavar="ID"),
    images: list[Path] = typer.Argument(
        None, help="Photos or folders of photos to compare on (default: generated test images)."
    ),
    variant: list[str] = typer.Option(
        None, "--variant", help="Installed variants to check (default: all installed)."
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="The source checkpoint (default: the one recorded)."
    ),
) -> None:
    """Compare installed TFLite variants with the numpy reference forward pass on the source checkpoint."""
    from rich.table import Table

    from musiq_daemon.discover import iter_photos
    from musiq_daemon.model.store import list_installed, load_installed
    from musiq_daemon.model.verify import verify_model

    catalogue = load_catalogue()
    spec = catalogue.get(model_id)
    chosen = variant or [m.variant for m in list_installed() if m.spec.id == model_id]
    if not chosen:
        load_installed(model_id, catalogue.default_variant)  # raises the "how to install" error
    photos = list(iter_photos(images or []))  # folders walked as `musiqd score` walks them
    report = verify_model([load_installed(model_id, v) for v in chosen], photos, checkpoint=checkpoint)
    plural = "" if report.num_images == 1 else "s"
    what = f"{report.num_images} photo{plural}" if photos else f"{report.num_images} generated images"
    scale = f"{spec.scale_min:g}-{spec.scale_max:g}"
    table = Table(title=f"{spec.id}: TFLite vs numpy reference (fp32 weights) on {what}; scores on {scale}")
    table.add_column("variant", no_wrap=True)
    for col in ("worst diff", "mean diff", "allowed", "raw rel", "Spearman", "ok"):
        table.add_column(col, no_wrap=True)
    for row in report.rows:
        table.add_row(
            row.variant,
            f"{row.max_reported_diff:.4f}",
            f"{row.mean_reported_diff:.4f}",
            f"{row.tolerance:.4f}",
            f"{row.max_rel_diff:.3%}",
            f"{row.spearman:.4f}" if report.num_images >= 3 else "n/a",  # a rank needs a few photos
            "yes" if row.ok else "NO",
        )
    _console().print(table)
    if not all(row.ok for row in report.rows):
        raise typer.Exit(1)
