"""The daemon's configuration: a TOML file, environment variables and command-line options.

>>> config, sources = load_config_with_sources()
>>> config.threads, sources["threads"]
(4, 'env MUSIQD_THREADS')

Where values come from, later ones winning:

1. the defaults (:class:`Config`);
2. one TOML file, the first that exists of: ``--config PATH``, ``$MUSIQD_CONFIG``,
   ``$XDG_CONFIG_HOME/musiqd/config.toml`` (``~/.config/musiqd/config.toml``), ``/etc/musiqd/config.toml``.
   A file named by ``--config`` or ``$MUSIQD_CONFIG`` must exist; the others are optional. Only one file is
   read: files are not merged, so what a file says is all there is to know besides the environment;
3. environment variables ``MUSIQD_<KEY>`` (``MUSIQD_THREADS=4``), ``MUSIQD_WRITE_<KEY>`` for the
   ``[write]`` table (``MUSIQD_WRITE_MODE=sidecar``) and ``MUSIQD_WRITE_STARS_<MODEL>`` for one model's
   star thresholds (``MUSIQD_WRITE_STARS_KONIQ=2.6,3.0,3.4,3.8``). Lists are separated by ``:`` for
   ``MUSIQD_ROOTS`` (like ``$PATH``) and by ``,`` otherwise; booleans are true/false, yes/no, on/off, 1/0;
   ``none`` clears an optional value. An empty variable counts as unset. ``$MUSIQD_DATABASE_URL``,
   ``$MUSIQD_DATA_DIR`` and ``$MUSIQD_MODEL_DIR`` keep their meaning (the index and model locations used
   when the configuration does not name them);
4. command-line options, passed as ``overrides`` keyed like the file (``{"threads": 4, "write.mode":
   "sidecar"}``; None means "not given"). Relative paths there are relative to the working directory;
   in a file or the environment they must be absolute (a service has no useful working directory).

A ``[write.stars]`` table in the file replaces the built-in thresholds as a whole (what the file shows is
what applies); ``MUSIQD_WRITE_STARS_<MODEL>`` and overrides change one model's entry.

``max_file_mb`` is a table by format (``max_file_mb = {tiff = 2048}``, or ``max_file_mb.tiff = 2048``);
each source changes only the formats it names, the others keep their limits
(``MUSIQD_MAX_FILE_MB=tiff=2048,raw=1024``). A limit is never switched off: a file larger than any photo
is refused before it is read.

Every problem is a :class:`~musiq_daemon.errors.ConfigError` whose message is one line naming where the
value came from and which key is wrong, e.g.
``config error: /etc/musiqd/config.toml: threads: must be at least 1 (got 0)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, get_args

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.errors import ConfigError, UsageError
from musiq_daemon.metadata.policy import DngMode, Mode, SidecarNaming, WritePolicy
from musiq_daemon.metadata.safefile import TEMP_PREFIX
from musiq_daemon.paths import PathMap

# Every command reads the configuration, most never score: the model runtime, the image code and the
# metadata writer (numpy, PIL, exiv2, LiteRT) stay unloaded here. The one check that needs the
# preprocessing module imports it when a resolution is given.

#: The runtime's devices (musiq_daemon.runtime.DEVICES; a test checks they agree). Importing the runtime
#: for these three words would load numpy into `musiqd status`.
DEVICES: Final = ("auto", "cpu", "gpu")
#: The largest file musiqd reads, in MB (1,000,000 bytes) by format: the decoder's
#: musiq_daemon.decode.DEFAULT_MAX_FILE_MB, which explains each value (a test checks they agree).
DEFAULT_MAX_FILE_MB: Final[Mapping[str, int]] = MappingProxyType(
    {"jpeg": 256, "png": 512, "tiff": 1024, "webp": 256, "heif": 256, "avif": 256, "bmp": 1024, "gif": 256,
     "raw": 512}
)  # fmt: skip

SYSTEM_CONFIG: Final = Path("/etc/musiqd/config.toml")
_NO_OVERRIDES: Final[Mapping[str, object]] = MappingProxyType({})
OBSERVERS: Final = ("auto", "native", "poll")
IOCLASSES: Final = ("idle", "best-effort", "none")

# Names that fnmatch a file or folder name; a folder that matches is skipped with everything under it.
DEFAULT_EXCLUDE: Final[tuple[str, ...]] = (
    # Files still being written by other programs (browsers, rsync/Samba partials, exiftool, LibreOffice
    # locks, macOS resource forks) and this program's own temporary files.
    "*.tmp",
    "*.part",
    "*_exiftool_tmp",
    ".~*",
    "._*",
    f"{TEMP_PREFIX}*",
    # NAS metadata and trash folders: thumbnails and deleted photos, not the collection (Synology, QNAP).
    "@eaDir",
    "#recycle",
    "#snapshot",
    ".@__thumb",
    ".DS_Store",
    # Sidecars change when a photo manager (or musiqd itself) edits ratings; they never need a score.
    "*.xmp",
    "*.XMP",
)


def in_quiet_hours(now: time, window: tuple[time, time] | None) -> bool:
    """Whether the local time ``now`` is in ``window`` = (start, end), start included, end excluded. A
    window whose end is before its start wraps midnight (22:00-06:00); one whose end equals its start is
    empty. The daemon's loop and its workers both ask here."""
    if window is None:
        return False
    start, end = window
    if start <= end:
        return start <= now < end
    return now >= start or now < end


@dataclass(frozen=True)
class Config:
    """Everything the daemon can be told (see the example configuration for what each value means)."""

    roots: tuple[Path, ...] = ()
    include: tuple[str, ...] = ()  # fnmatch globs on the file name; empty = every photo format musiqd reads
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    database: str | None = None  # index URL or absolute path; None = $MUSIQD_DATABASE_URL or the data dir
    models: tuple[str, ...] = ("koniq",)  # every model scores every photo
    variant: str = "dynamic-int8"
    device: str = "auto"
    threads: int = 2
    workers: int = 1
    resolution: str | None = None  # "full" or "max_side=N"; None = each model's default
    max_pixels: int = 200_000_000
    max_file_mb: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_FILE_MB))  # by format
    write: WritePolicy = field(default_factory=WritePolicy)
    rescan_interval: float = 3600.0  # seconds between reconciliation scans
    observer: str = "auto"  # auto | native | poll
    poll_interval: float = 300.0  # seconds between polls of a polled root
    quiet_period: float = 5.0  # seconds without writes before a new file counts as complete
    max_wait: float = 600.0  # a file still being written after this long is checked anyway
    quiet_hours: tuple[time, time] | None = None  # no scoring from start to end (may wrap midnight)
    nice: int = 10
    ioclass: str = "idle"  # idle | best-effort | none
    retries: int = 3
    retry_backoff: float = 60.0  # a failed job is retried after retry_backoff * 2**attempt seconds
    # "NAS_PATH=LOCAL_PATH": where a `musiqd worker` on another machine sees the index's photos
    path_map: tuple[str, ...] = ()
    cull: bool = True  # the daemon groups bursts as photos arrive (and marks each one's best)
    burst_gap: float = 3.0  # most seconds between two frames of a burst
    burst_distance: int = 18  # most perceptual-hash bits (of 63) two frames of a burst may differ by

    def in_quiet_hours(self, now: time) -> bool:
        """Whether ``now`` (local wall-clock time) is in the quiet hours (see :func:`in_quiet_hours`)."""
        return in_quiet_hours(now, self.quiet_hours)

    def to_toml(self, sources: Mapping[str, str] | None = None, *, hide_password: bool = False) -> str:
        """This configuration as a TOML file that loads back to an equal :class:`Config`.

        With ``sources`` (from :func:`load_config_with_sources`) each value carries a trailing comment
        saying where it came from. ``hide_password`` masks a password in a database URL (for display).
        """
        return _render(self, sources, hide_password=hide_password)


# --- problems -------------------------------------------------------------------------------------------

DEFAULT: Final = "default"
COMMAND_LINE: Final = "command line"
_ENV_PREFIX: Final = "MUSIQD_"
# Variables that are not settings but are read elsewhere (paths.py, index/db.py, the test suite) or select
# the file: `config check` must not call them typos.
OTHER_ENV: Final = frozenset(
    {
        "MUSIQD_CONFIG",
        "MUSIQD_DATA_DIR",
        "MUSIQD_MODEL_DIR",
        "MUSIQD_DATABASE_URL",
        "MUSIQD_TEST_DATABASE_URL",
    }
)


class _BadValueError(Exception):
    """What is wrong with one value; the loader adds where it came from."""


def _error(source: str, key: str, problem: str) -> ConfigError:
    if source.startswith("env "):
        # The variable's name already says which key it sets.
        return ConfigError(f"config error: environment variable {source[4:]}: {problem}")
    return ConfigError(f"config error: {source}: {key}: {problem}")


def _show(value: object) -> str:
    """A value as the user wrote it (TOML notation where possible), for messages."""
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# --- value parsers: a TOML-like value (or a command-line object) -> the Config value ---------------------
# Each takes the value and whether it came from the command line (where relative paths are allowed).

Parser = Callable[[object, bool], Any]


def _int(minimum: int, maximum: int | None = None) -> Parser:
    def parse(value: object, cli: bool) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadValueError(f"must be an integer (got {_show(value)})")
        if value < minimum:
            raise _BadValueError(f"must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise _BadValueError(f"must be at most {maximum} (got {value})")
        return value

    return parse


def _file_limits(value: object, cli: bool) -> dict[str, int]:
    # Only the formats given: the loader merges them into the limits already in force.
    if not isinstance(value, Mapping) or not value:
        raise _BadValueError(
            "must be a table of MB by format, e.g. {tiff = 2048}; formats: "
            f"{', '.join(DEFAULT_MAX_FILE_MB)} (got {_show(value)})"
        )
    limits: dict[str, int] = {}
    for fmt, mb in value.items():
        if fmt not in DEFAULT_MAX_FILE_MB:
            raise _BadValueError(
                f"unknown format {_show(fmt)}{_suggest(str(fmt), DEFAULT_MAX_FILE_MB)}: choose from "
                f"{', '.join(DEFAULT_MAX_FILE_MB)}"
            )
        try:
            limits[fmt] = _int(1)(mb, cli)
        except _BadValueError as exc:
            raise _BadValueError(f"{fmt}: {exc}") from None
    return limits


def _seconds(value: object, cli: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadValueError(f"must be a number of seconds (got {_show(value)})")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _BadValueError(f"must be a finite number of seconds greater than 0 (got {_show(value)})")
    return number


def _bool(value: object, cli: bool) -> bool:
    if not isinstance(value, bool):
        raise _BadValueError(f"must be true or false (got {_show(value)})")
    return value


def _choice(choices: Callable[[], Sequence[str]]) -> Parser:
    # Lazy: the variants come from the model catalogue.
    def parse(value: object, cli: bool) -> str:
        known = choices()
        if not isinstance(value, str) or value not in known:
            raise _BadValueError(
                f"unknown value {_show(value)}{_suggest(str(value), known)}: choose one of {', '.join(known)}"
            )
        return value

    return parse


def _strings(value: object, cli: bool) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise _BadValueError(f"must be a list of non-empty strings (got {_show(value)})")
    return tuple(value)


def _path_map(value: object, cli: bool) -> tuple[str, ...]:
    pairs = _strings(value, cli)
    try:
        PathMap.parse(pairs)
    except UsageError as exc:
        raise _BadValueError(exc.message) from None
    return pairs


def _model_ids() -> list[str]:
    return sorted(load_catalogue().models)


def _model(value: object) -> str:
    known = _model_ids()
    if not isinstance(value, str) or value not in known:
        raise _BadValueError(
            f"unknown model {_show(value)}{_suggest(str(value), known)}: choose from {', '.join(known)}"
        )
    return value


def _models(value: object, cli: bool) -> tuple[str, ...]:
    models = _strings(value, cli)
    if not models:
        raise _BadValueError("must name at least one model")
    for model in models:
        _model(model)
    if len(set(models)) != len(models):
        raise _BadValueError(f"names a model twice (got {_show(value)})")
    return models


def _path(value: object, cli: bool) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise _BadValueError(f"must be a path (got {_show(value)})")
    path = Path(os.fspath(value)).expanduser()
    if not path.is_absolute():
        if not cli:
            raise _BadValueError(f"must be an absolute path (got {_show(os.fspath(value))})")
        path = Path(os.path.abspath(path))  # not resolve(): a NAS share may be reached through a symlink
    # normpath, not resolve(), for the same reason; it drops "." and trailing slashes.
    return Path(os.path.normpath(path))


def _roots(value: object, cli: bool) -> tuple[Path, ...]:
    if not isinstance(value, list | tuple):
        raise _BadValueError(f"must be a list of absolute paths (got {_show(value)})")
    roots = tuple(_path(item, cli) for item in value)
    for i, root in enumerate(roots):
        for other in roots[:i]:
            if root == other:
                raise _BadValueError(f"{root} is listed twice")
            # A photo under two roots would be indexed (and scored) twice under two names.
            inner, outer = (root, other) if root.is_relative_to(other) else (other, root)
            if inner.is_relative_to(outer):
                raise _BadValueError(f"{inner} is inside {outer}: list only {outer}")
    return roots


def _database(value: object, cli: bool) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise _BadValueError(f"must be a database URL or an absolute path (got {_show(value)})")
    text = os.fspath(value)
    if "://" in text:
        return text
    return str(_path(text, cli))


def _resolution(value: object, cli: bool) -> str:
    from musiq_daemon.preprocess import ResolutionPolicy

    if not isinstance(value, str):
        raise _BadValueError(f'must be "full" or "max_side=N" (got {_show(value)})')
    try:
        return ResolutionPolicy.parse(value).describe()
    except UsageError as exc:
        raise _BadValueError(exc.message) from None


_CLOCK: Final = r"([01]?\d|2[0-3]):([0-5]\d)"
_QUIET_HOURS: Final = re.compile(rf"{_CLOCK}\s*-\s*{_CLOCK}")


def _quiet_hours(value: object, cli: bool) -> tuple[time, time]:
    if cli and isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, time) for t in value):
        start, end = value
    else:
        match = _QUIET_HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise _BadValueError(f'must look like "22:00-06:00" (24-hour HH:MM-HH:MM; got {_show(value)})')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise _BadValueError(f"start and end are the same ({_show(value)}): quiet hours would be empty")
    return (start, end)


def _rating_model(value: object, cli: bool) -> str:
    return _model(value)


def _stars(model: str, value: object) -> tuple[float, float, float, float]:
    _model(model)
    # Strings and booleans would pass the writer's float() conversion.
    if not isinstance(value, list | tuple) or any(isinstance(v, bool | str) for v in value):
        raise _BadValueError(f"must be a list of 4 increasing numbers (got {_show(value)})")
    try:
        # The writer owns the rule for thresholds; its message explains it.
        policy = WritePolicy(star_thresholds={model: value}, rating_model=None)  # type: ignore[dict-item]
    except UsageError as exc:
        raise _BadValueError(exc.message) from None
    return policy.star_thresholds[model]


# --- parsers from environment strings to TOML-like values ------------------------------------------------

EnvParser = Callable[[str], object]


def _env_str(text: str) -> object:
    return text


def _env_int(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        raise _BadValueError(f"must be an integer (got {_show(text)})") from None


def _env_float(text: str) -> object:
    try:
        return float(text.strip())
    except ValueError:
        raise _BadValueError(f"must be a number of seconds (got {_show(text)})") from None


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _env_bool(text: str) -> object:
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise _BadValueError(f"must be true or false (got {_show(text)})")


def _env_list(separator: str) -> EnvParser:
    def parse(text: str) -> object:
        return [part.strip() for part in text.split(separator) if part.strip()]

    return parse


def _env_file_limits(text: str) -> object:
    limits: dict[str, object] = {}
    for part in text.split(","):
        fmt, equals, mb = part.partition("=")
        if not equals:
            raise _BadValueError(f"must look like tiff=2048,raw=1024 (MB by format; got {_show(text)})")
        limits[fmt.strip()] = _env_int(mb)
    return limits


def _env_floats(text: str) -> object:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise _BadValueError(f"must be 4 comma-separated numbers (got {_show(text)})") from None


# --- the keys -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    parse: Parser
    env: EnvParser
    optional: bool = False  # may be None: "none" or "off" in a file or the environment, or left out
    merge: bool = False  # a table whose entries each source changes one by one


_TOP: Final[dict[str, _Key]] = {
    "roots": _Key(_roots, _env_list(":")),
    "include": _Key(_strings, _env_list(",")),
    "exclude": _Key(_strings, _env_list(",")),
    "database": _Key(_database, _env_str, optional=True),
    "models": _Key(_models, _env_list(",")),
    "variant": _Key(_choice(lambda: load_catalogue().variants), _env_str),
    "device": _Key(_choice(lambda: DEVICES), _env_str),
    "threads": _Key(_int(1), _env_int),
    "workers": _Key(_int(1), _env_int),
    "resolution": _Key(_resolution, _env_str, optional=True),
    "max_pixels": _Key(_int(1), _env_int),
    "max_file_mb": _Key(_file_limits, _env_file_limits, merge=True),
    "rescan_interval": _Key(_seconds, _env_float),
    "observer": _Key(_choice(lambda: OBSERVERS), _env_str),
    "poll_interval": _Key(_seconds, _env_float),
    "quiet_period": _Key(_seconds, _env_float),
    "max_wait": _Key(_seconds, _env_float),
    "quiet_hours": _Key(_quiet_hours, _env_str, optional=True),
    # 0..19: a process may only make itself nicer; negative values need privileges a service lacks.
    "nice": _Key(_int(0, 19), _env_int),
    "ioclass": _Key(_choice(lambda: IOCLASSES), _env_str),
    "retries": _Key(_int(0), _env_int),
    "retry_backoff": _Key(_seconds, _env_float),
    "path_map": _Key(_path_map, _env_list(";")),
    "cull": _Key(_bool, _env_bool),
    "burst_gap": _Key(_seconds, _env_float),
    "burst_distance": _Key(_int(0, 63), _env_int),
}
_WRITE: Final[dict[str, _Key]] = {
    "mode": _Key(_choice(lambda: get_args(Mode)), _env_str),
    "dng": _Key(_choice(lambda: get_args(DngMode)), _env_str),
    "sidecar_naming": _Key(_choice(lambda: get_args(SidecarNaming)), _env_str),
    "rating_model": _Key(_rating_model, _env_str, optional=True),
    "keywords": _Key(_bool, _env_bool),
    "best_of_burst": _Key(_bool, _env_bool),
    "preserve_mtime": _Key(_bool, _env_bool),
}
_STARS: Final = "write.stars"
_NONE_WORDS: Final = frozenset({"none", "off"})

# Every dotted key a value can have, in the order a file shows them.
_SCALAR_KEYS: Final[tuple[str, ...]] = (*_TOP, *(f"write.{k}" for k in _WRITE))
KEYS: Final[tuple[str, ...]] = (*_SCALAR_KEYS, _STARS)
# Config fields in the order of the dataclass; the file shows [write] last because TOML tables must follow
# the top-level keys.
_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Config))


def _spec(key: str) -> _Key:
    return _WRITE[key[6:]] if key.startswith("write.") else _TOP[key]


def env_name(key: str) -> str:
    """The environment variable for a dotted key (``write.mode`` -> ``MUSIQD_WRITE_MODE``)."""
    return _ENV_PREFIX + key.replace(".", "_").upper()


# --- the search for a file ------------------------------------------------------------------------------


def config_search_path(
    env: Mapping[str, str] = os.environ, *, system_file: Path = SYSTEM_CONFIG
) -> list[Path]:
    """The default locations, in order (without ``--config`` and ``$MUSIQD_CONFIG``)."""
    found: list[Path] = []
    xdg = env.get("XDG_CONFIG_HOME", "")
    home = env.get("HOME", "")
    # The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    if xdg and Path(xdg).is_absolute():
        found.append(Path(xdg) / "musiqd" / "config.toml")
    elif home and Path(home).is_absolute():
        found.append(Path(home) / ".config" / "musiqd" / "config.toml")
    found.append(system_file)
    return found


def find_config_file(
    explicit: Path | None, env: Mapping[str, str] = os.environ, *, system_file: Path = SYSTEM_CONFIG
) -> Path | None:
    """The file to read, or None when there is none; a named file that does not exist is an error."""
    named: tuple[Path, str] | None = None
    if explicit is not None:
        named = (explicit, "given with --config")
    elif env.get("MUSIQD_CONFIG"):
        named = (Path(env["MUSIQD_CONFIG"]), "named by $MUSIQD_CONFIG")
    if named is not None:
        path, how = named
        if not path.exists():
            raise ConfigError(f"config error: {path}: no such file ({how})")
        if path.is_dir():
            raise ConfigError(f"config error: {path}: is a directory, not a file ({how})")
        return path
    for path in config_search_path(env, system_file=system_file):
        try:
            if path.is_file():
                return path
        except OSError:
            # e.g. a home directory hidden by the service's sandbox: nothing to read there.
            continue
    return None


# --- loading --------------------------------------------------------------------------------------------


def load_config(
    explicit: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = _NO_OVERRIDES,
    system_file: Path = SYSTEM_CONFIG,
) -> Config:
    """The effective configuration (see the module docstring for the order)."""
    return load_config_with_sources(explicit, env=env, overrides=overrides, system_file=system_file)[0]


def load_config_with_sources(
    explicit: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = _NO_OVERRIDES,
    system_file: Path = SYSTEM_CONFIG,
) -> tuple[Config, dict[str, str]]:
    """The configuration, and where each value came from.

    Sources are keyed by dotted key (``threads``, ``write.mode``, ``write.stars.koniq``) and say
    ``default``, the file's path, ``env MUSIQD_<KEY>`` or ``command line``.
    """
    return _load(explicit, env, overrides, system_file, _Problems(collect=False))


def config_problems(
    explicit: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    system_file: Path = SYSTEM_CONFIG,
) -> list[ConfigError]:
    """Every problem of the configuration, not only the first (for ``musiqd config check``): each bad
    value is reported and replaced by its default, so that the values after it are checked too."""
    problems = _Problems(collect=True)
    with problems.each():
        _load(explicit, env, _NO_OVERRIDES, system_file, problems)
    return problems.found


class _Problems:
    """Configuration errors: raised at once (every command), or collected one per value (``config check``)."""

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.found: list[ConfigError] = []

    @contextmanager
    def each(self) -> Iterator[None]:
        try:
            yield
        except ConfigError as exc:
            if not self.collect:
                raise
            self.found.append(exc)


def _load(
    explicit: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, object],
    system_file: Path,
    problems: _Problems,
) -> tuple[Config, dict[str, str]]:
    values = _flatten(Config())
    sources = dict.fromkeys(KEYS, DEFAULT)
    sources.update({f"{_STARS}.{m}": DEFAULT for m in values[_STARS]})
    path = find_config_file(explicit, env, system_file=system_file)
    if path is not None:
        _apply_file(path, values, sources, problems)
    _apply_env(env, values, sources, problems)
    _apply_overrides(overrides, values, sources)
    return _build(values, sources), sources


def _set(values: dict[str, Any], sources: dict[str, str], key: str, value: object, source: str) -> None:
    spec = _spec(key)
    if spec.optional and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        value = None  # "none"/"off" clear an optional value (a file cannot hold a TOML null)
    try:
        if spec.optional and value is None:
            values[key] = None
        elif spec.merge:
            values[key] = {**values[key], **spec.parse(value, source == COMMAND_LINE)}
        else:
            values[key] = spec.parse(value, source == COMMAND_LINE)
    except _BadValueError as exc:
        raise _error(source, key, str(exc)) from None
    sources[key] = source


def _set_stars(
    values: dict[str, Any], sources: dict[str, str], model: str, value: object, source: str
) -> None:
    key = f"{_STARS}.{model}"
    try:
        values[_STARS][model] = _stars(model, value)
    except _BadValueError as exc:
        raise _error(source, key, str(exc)) from None
    sources[key] = source


def _apply_file(path: Path, values: dict[str, Any], sources: dict[str, str], problems: _Problems) -> None:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error: {where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config error: {where}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"config error: {where}: invalid TOML: {exc}") from None
    for key, value in data.items():
        with problems.each():
            if key == "write":
                if not isinstance(value, dict):
                    raise _error(where, key, "must be a table ([write])")
                _apply_write_table(where, value, values, sources, problems)
            elif key in _TOP:
                _set(values, sources, key, value, where)
            else:
                raise _error(where, key, _unknown_top(key))


def _unknown_top(key: str) -> str:
    if key in _WRITE or key == "stars":
        return f"unknown key: it belongs in the [write] table ([write] {key} = ...)"
    return f"unknown key{_suggest(key, [*_TOP, 'write'])}"


def _apply_write_table(
    where: str, table: dict[str, Any], values: dict[str, Any], sources: dict[str, str], problems: _Problems
) -> None:
    for key, value in table.items():
        with problems.each():
            _apply_write_key(where, key, value, values, sources, problems)


def _apply_write_key(
    where: str, key: str, value: object, values: dict[str, Any], sources: dict[str, str], problems: _Problems
) -> None:
    dotted = f"write.{key}"
    if key == "stars":
        if not isinstance(value, dict):
            raise _error(where, dotted, "must be a table ([write.stars] with one entry per model)")
        # The file's table replaces the built-in one (see the module docstring).
        values[_STARS] = {}
        for old in [k for k in sources if k.startswith(f"{_STARS}.")]:
            del sources[old]
        sources[_STARS] = where
        for model, bounds in value.items():
            with problems.each():
                _set_stars(values, sources, model, bounds, where)
    elif key in _WRITE:
        _set(values, sources, dotted, value, where)
    else:
        raise _error(where, dotted, f"unknown key{_suggest(key, [*_WRITE, 'stars'])}")


def _apply_env(
    env: Mapping[str, str], values: dict[str, Any], sources: dict[str, str], problems: _Problems
) -> None:
    for key in _SCALAR_KEYS:
        name = env_name(key)
        text = env.get(name, "")
        if not text:
            continue
        source = f"env {name}"
        with problems.each():
            try:
                raw = _spec(key).env(text)
            except _BadValueError as exc:
                raise _error(source, key, str(exc)) from None
            _set(values, sources, key, raw, source)
    stars_prefix = env_name(_STARS) + "_"
    for name in sorted(env):
        if name.startswith(stars_prefix) and env[name]:
            source = f"env {name}"
            model = name[len(stars_prefix) :].lower()
            with problems.each():
                try:
                    bounds = _env_floats(env[name])
                except _BadValueError as exc:
                    raise _error(source, _STARS, str(exc)) from None
                _set_stars(values, sources, model, bounds, source)


def _apply_overrides(
    overrides: Mapping[str, object], values: dict[str, Any], sources: dict[str, str]
) -> None:
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith(f"{_STARS}."):
            _set_stars(values, sources, key[len(_STARS) + 1 :], value, COMMAND_LINE)
        elif key in _SCALAR_KEYS:
            _set(values, sources, key, value, COMMAND_LINE)
        else:
            raise ConfigError(f"config error: {COMMAND_LINE}: {key}: unknown key{_suggest(key, KEYS)}")


def _origin(sources: Mapping[str, str], *keys: str) -> tuple[str, str]:
    """The key (and its source) a cross-check failure is reported at: the first one the user set."""
    for key in keys:
        if sources[key] != DEFAULT:
            return sources[key], key
    return sources[keys[0]], keys[0]


def _build(values: dict[str, Any], sources: Mapping[str, str]) -> Config:
    if values["quiet_period"] > values["max_wait"]:
        source, key = _origin(sources, "quiet_period", "max_wait")
        raise _error(
            source,
            key,
            f"quiet_period ({values['quiet_period']:g} s) must not be longer than max_wait "
            f"({values['max_wait']:g} s)",
        )
    rating = values["write.rating_model"]
    if rating is not None and rating not in values[_STARS]:
        source, key = _origin(sources, "write.rating_model", _STARS)
        raise _error(
            source,
            key,
            f'the rating model "{rating}" has no star thresholds: add [write.stars] {rating} = [...] '
            'or set rating_model = "none"',
        )
    try:
        policy = WritePolicy(
            **{k: values[f"write.{k}"] for k in _WRITE}, star_thresholds=dict(values[_STARS])
        )
    except UsageError as exc:  # every value was checked above; this only guards future policy rules
        source, key = _origin(sources, *[f"write.{k}" for k in _WRITE])
        raise _error(source, key, exc.message) from None
    fields = {name: values[name] for name in _FIELDS if name != "write"}
    return Config(**fields, write=policy)


# --- dumping --------------------------------------------------------------------------------------------


def _flatten(config: Config) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(config, name) for name in _TOP}
    for key in _WRITE:
        values[f"write.{key}"] = getattr(config.write, key)
    values[_STARS] = dict(config.write.star_thresholds)
    return values


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 100_000:
        return f"{value:_}"  # TOML allows digit separators; 200_000_000 is easier to read
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, os.PathLike):
        return _toml_string(os.fspath(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in value
    ):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _dump_value(key: str, value: Any) -> str | None:
    """The TOML text for one key's value; None for an optional value that is not set."""
    if key == "quiet_hours" and value is not None:
        start, end = value
        return _toml_string(f"{start:%H:%M}-{end:%H:%M}")
    if key == "write.rating_model" and value is None:
        return '"none"'  # not left out: the default is a model, so absence would mean koniq
    if value is None:
        return None
    return _toml_value(value)


_PASSWORD: Final = re.compile(r"(://[^/:@]*:)[^/@]*@")
_UNSET: Final[dict[str, str]] = {
    "database": "$MUSIQD_DATABASE_URL, else index.sqlite3 in the data directory",
    "resolution": "each model's default resolution",
    "quiet_hours": "scoring runs at any time",
}
_EXAMPLES: Final[dict[str, str]] = {
    "database": '"/var/lib/musiqd/index.sqlite3"',
    "resolution": '"max_side=1024"',
    "quiet_hours": '"22:00-06:00"',
}


def _unset_database() -> str:
    """What an unset ``database`` means here and now: the index the commands will really open."""
    from musiq_daemon.index.location import default_url

    url = _PASSWORD.sub(r"\1***@", default_url())
    if os.environ.get("MUSIQD_DATABASE_URL"):
        return f"$MUSIQD_DATABASE_URL is used: {url}"
    return f"$MUSIQD_DATABASE_URL is not set either: {url}"


def _render(config: Config, sources: Mapping[str, str] | None, *, hide_password: bool) -> str:
    values = _flatten(config)

    def note(key: str) -> str:
        return f"  # {sources.get(key, DEFAULT)}" if sources is not None else ""

    def line(name: str, key: str) -> str:
        value = values[key]
        text = _dump_value(key, value)
        if text is None:
            source = f"{sources.get(key, DEFAULT)}: " if sources is not None else ""
            unset = _unset_database() if key == "database" else _UNSET[key]
            return f"# {name} = {_EXAMPLES[key]}  # {source}not set: {unset}"
        if hide_password and key == "database":
            text = _PASSWORD.sub(r"\1***@", text)
        if isinstance(value, tuple) and len(value) > 3:
            # One entry per line keeps long lists (exclude) readable and easy to edit.
            items = "".join(f"    {_toml_value(v)},\n" for v in value)
            return f"{name} = [{note(key)}\n{items}]"
        return f"{name} = {text}{note(key)}"

    out = [line(key, key) for key in _TOP]
    out += ["", "[write]"]
    out += [line(key, f"write.{key}") for key in _WRITE]
    out += ["", f"[write.stars]{note(_STARS)}"]
    out += [f"{m} = {_toml_value(b)}{note(f'{_STARS}.{m}')}" for m, b in values[_STARS].items()]
    return "\n".join(out) + "\n"


# --- checks that need the machine -----------------------------------------------------------------------


def check_roots(config: Config) -> list[str]:
    """Warnings about the roots as this user sees them now (a root may be a share that is not mounted)."""
    if not config.roots:
        return ["roots: none configured: the daemon has nothing to watch"]
    warnings: list[str] = []
    writes = config.write.mode != "index-only"
    for root in config.roots:
        if not root.exists():
            warnings.append(f"roots: {root} does not exist (a share that is not mounted?)")
        elif not root.is_dir():
            warnings.append(f"roots: {root} is not a directory")
        elif not os.access(root, os.R_OK | os.X_OK):
            warnings.append(f"roots: {root} is not readable by this user (uid {os.getuid()})")
        elif writes and not os.access(root, os.W_OK):
            warnings.append(
                f"roots: {root} is not writable by this user (uid {os.getuid()}): writing scores will "
                'fail; give write access or set [write] mode = "index-only"'
            )
    return warnings


def check_environment(env: Mapping[str, str] = os.environ) -> list[str]:
    """Warnings about ``MUSIQD_*`` variables that are no setting (typos are otherwise silently ignored)."""
    known = {env_name(key) for key in _SCALAR_KEYS} | OTHER_ENV
    stars_prefix = env_name(_STARS) + "_"
    return [
        f"environment: {name} is not a musiqd setting and is ignored{_suggest(name, known)}"
        for name in sorted(env)
        if name.startswith(_ENV_PREFIX) and name not in known and not name.startswith(stars_prefix)
    ]


def config_warnings(config: Config, env: Mapping[str, str] = os.environ) -> list[str]:
    """What `musiqd config check` reports besides errors: valid, but probably not what was meant."""
    warnings = check_roots(config)
    rating = config.write.rating_model
    if rating is not None and rating not in config.models:
        warnings.append(
            f'write.rating_model: "{rating}" is not among models ({", ".join(config.models)}): '
            "no photo will get stars"
        )
    warnings += check_environment(env)
    return warnings
