"""``musiqd config``: show the effective configuration and where each value comes from, or check it."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from musiq_daemon.cli.options import CONFIG_OPTION

# The configuration module imports the metadata writer and the model runtime; commands import it when run,
# so that `musiqd --help` stays fast.

app = typer.Typer(
    help="Show or check the configuration (file, MUSIQD_* environment variables, defaults).",
    no_args_is_help=True,
)


@app.command("show")
def show(
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Print the effective configuration as TOML; a comment after each value says where it came from.

    The output is a valid configuration file (database passwords are masked).
    """
    from musiq_daemon.config import config_search_path, find_config_file, load_config_with_sources

    path = find_config_file(config, os.environ)
    loaded, sources = load_config_with_sources(config)
    if path is None:
        searched = ", ".join(str(p) for p in config_search_path(os.environ))
        typer.echo(f"# no configuration file (searched $MUSIQD_CONFIG, {searched})")
    else:
        typer.echo(f"# configuration file: {path}")
    typer.echo(loaded.to_toml(sources, hide_password=True), nl=False)


@app.command("check")
def check(
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Validate the configuration: exit 0 if it is usable (warnings go to stderr), 2 if it is not (every
    problem on a line of its own)."""
    from musiq_daemon.config import config_problems, config_warnings, find_config_file, load_config
    from musiq_daemon.errors import ConfigError

    try:
        path = find_config_file(config, os.environ)
        problems = config_problems(config)
        if problems:
            # The verdict is the output: one line per problem, each the line any other command would stop
            # with at the first of them.
            for problem in problems:
                typer.echo(problem.message, err=True)
            raise typer.Exit(problems[0].exit_code)
        loaded = load_config(config)
    except ConfigError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(exc.exit_code) from None
    for warning in config_warnings(loaded) + _model_warnings(loaded.models, loaded.variant):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"config OK: {path if path is not None else 'no file (defaults and environment)'}")


def _model_warnings(models: tuple[str, ...], variant: str) -> list[str]:
    """Models the configuration names that are not installed where the daemon will look for them."""
    from musiq_daemon.errors import ModelFileError, ModelNotInstalledError
    from musiq_daemon.model.store import load_installed

    warnings = []
    for model in models:
        try:
            # Checksums are for `models verify`: reading every model here would make a check slow.
            load_installed(model, variant, verify_checksum=False)
        except (ModelNotInstalledError, ModelFileError) as exc:
            warnings.append(f"models: {exc.message}")
    return warnings
