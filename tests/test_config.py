"""Configuration: file search order, environment and command-line overrides, every validation error (one
line naming where and which key), the TOML round trip, the example file, and `musiqd config show/check`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from datetime import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.config import (
    DEFAULT_EXCLUDE,
    Config,
    check_environment,
    check_roots,
    config_warnings,
    env_name,
    find_config_file,
    load_config,
    load_config_with_sources,
)
from musiq_daemon.errors import ConfigError, UsageError
from musiq_daemon.metadata.writer import WritePolicy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "config.example.toml"
MUSIQD = [sys.executable, "-m", "musiq_daemon"]


@pytest.fixture
def system_file(tmp_path: Path) -> Path:
    """Stands in for /etc/musiqd/config.toml (never touched by the tests)."""
    return tmp_path / "etc" / "musiqd" / "config.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path / "config.toml", text), env={})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, system_file=tmp_path / "none.toml")
    message = info.value.message
    assert "\n" not in message
    assert message.startswith("config error: ")
    return message


# --- the search for a file ------------------------------------------------------------------------------


def test_search_order(tmp_path: Path, system_file: Path) -> None:
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(xdg), "MUSIQD_CONFIG": str(tmp_path / "env.toml")}
    explicit = write(tmp_path / "explicit.toml", "")
    write(tmp_path / "env.toml", "")
    write(xdg / "musiqd" / "config.toml", "")
    write(home / ".config" / "musiqd" / "config.toml", "")
    write(system_file, "")

    assert find_config_file(explicit, env, system_file=system_file) == explicit
    assert find_config_file(None, env, system_file=system_file) == tmp_path / "env.toml"
    del env["MUSIQD_CONFIG"]
    assert find_config_file(None, env, system_file=system_file) == xdg / "musiqd" / "config.toml"
    # $XDG_CONFIG_HOME replaces ~/.config; without it (or when it is relative, which the spec says to
    # ignore) ~/.config is used.
    (xdg / "musiqd" / "config.toml").unlink()
    assert find_config_file(None, env, system_file=system_file) == system_file
    for value in ("", "relative/dir"):
        env["XDG_CONFIG_HOME"] = value
        assert find_config_file(None, env, system_file=system_file) == home / ".config/musiqd/config.toml"
    (home / ".config" / "musiqd" / "config.toml").unlink()
    assert find_config_file(None, env, system_file=system_file) == system_file
    system_file.unlink()
    assert find_config_file(None, env, system_file=system_file) is None
    assert find_config_file(None, {}, system_file=system_file) is None


def test_the_file_found_is_the_one_read(tmp_path: Path, system_file: Path) -> None:
    write(system_file, "threads = 3\n")
    write(tmp_path / "home" / ".config" / "musiqd" / "config.toml", "threads = 5\n")
    config, sources = load_config_with_sources(env={"HOME": str(tmp_path / "home")}, system_file=system_file)
    # One file only: the user's file wins and the system file is not merged in.
    assert config.threads == 5
    assert sources["threads"] == str(tmp_path / "home" / ".config" / "musiqd" / "config.toml")
    assert load_config(env={}, system_file=system_file).threads == 3
    assert load_config(env={}, system_file=tmp_path / "missing.toml") == Config()


def test_a_named_file_must_exist(tmp_path: Path, system_file: Path) -> None:
    write(system_file, "")
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file \(given with --config\)"):
        load_config(tmp_path / "nope.toml", env={}, system_file=system_file)
    env = {"MUSIQD_CONFIG": str(tmp_path / "gone.toml")}
    with pytest.raises(ConfigError, match=r"gone\.toml: no such file \(named by \$MUSIQD_CONFIG\)"):
        load_config(env=env, system_file=system_file)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={}, system_file=system_file)
    # --config wins over $MUSIQD_CONFIG, so a stale variable does not matter when a file is given.
    assert load_config(system_file, env=env, system_file=system_file) == Config()


# --- the environment and the command line ---------------------------------------------------------------


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", 'threads = 3\nworkers = 2\n[write]\nmode = "sidecar"\n')
    env = {
        "MUSIQD_THREADS": "4",
        "MUSIQD_ROOTS": "/volume1/photo:/volume2/more/:",
        "MUSIQD_MODELS": "koniq, ava",
        "MUSIQD_EXCLUDE": "*.tmp,@eaDir",
        "MUSIQD_RESCAN_INTERVAL": "1800",
        "MUSIQD_QUIET_HOURS": "23:30-07:00",
        "MUSIQD_DATABASE": "postgresql://musiqd@db/musiqd",
        "MUSIQD_WRITE_MODE": "index-only",
        "MUSIQD_WRITE_KEYWORDS": "no",
        "MUSIQD_WRITE_PRESERVE_MTIME": "On",
        "MUSIQD_WRITE_STARS_AVA": "4, 5, 6, 7",
        "MUSIQD_VARIANT": "",  # empty = unset
    }
    config, sources = load_config_with_sources(path, env=env)
    assert config.threads == 4 and sources["threads"] == "env MUSIQD_THREADS"
    assert config.workers == 2 and sources["workers"] == str(path)
    assert config.roots == (Path("/volume1/photo"), Path("/volume2/more"))
    assert config.models == ("koniq", "ava")
    assert config.exclude == ("*.tmp", "@eaDir")
    assert config.rescan_interval == 1800.0
    assert config.quiet_hours == (time(23, 30), time(7, 0))
    assert config.database == "postgresql://musiqd@db/musiqd"
    assert config.write.mode == "index-only" and sources["write.mode"] == "env MUSIQD_WRITE_MODE"
    assert config.write.keywords is False and config.write.preserve_mtime is True
    assert config.write.star_thresholds["ava"] == (4.0, 5.0, 6.0, 7.0)
    assert config.write.star_thresholds["koniq"] == (2.6, 3.0, 3.4, 3.8)
    assert sources["write.stars.ava"] == "env MUSIQD_WRITE_STARS_AVA"
    assert config.variant == "dynamic-int8" and sources["variant"] == "default"


def test_none_clears_an_optional_value(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", 'quiet_hours = "22:00-06:00"\n[write]\nrating_model = "none"\n')
    config = load_config(path, env={})
    assert config.quiet_hours == (time(22), time(6)) and config.write.rating_model is None
    config = load_config(path, env={"MUSIQD_QUIET_HOURS": "off", "MUSIQD_WRITE_RATING_MODEL": "koniq"})
    assert config.quiet_hours is None and config.write.rating_model == "koniq"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("MUSIQD_THREADS", "four", 'must be an integer (got "four")'),
        ("MUSIQD_THREADS", "0", "must be at least 1 (got 0)"),
        ("MUSIQD_WORKERS", "1.5", "must be an integer"),
        ("MUSIQD_RESCAN_INTERVAL", "1h", 'must be a number of seconds (got "1h")'),
        ("MUSIQD_POLL_INTERVAL", "nan", "finite number of seconds greater than 0"),
        ("MUSIQD_ROOTS", "photos", 'must be an absolute path (got "photos")'),
        ("MUSIQD_MODELS", "koniq,musiq", 'unknown model "musiq"'),
        ("MUSIQD_DEVICE", "cuda", 'unknown value "cuda"'),
        ("MUSIQD_QUIET_HOURS", "10pm-6am", 'must look like "22:00-06:00"'),
        ("MUSIQD_WRITE_MODE", "xmp", 'unknown value "xmp"'),
        ("MUSIQD_WRITE_KEYWORDS", "maybe", 'must be true or false (got "maybe")'),
        ("MUSIQD_WRITE_STARS_KONIQ", "1,2,x,4", "must be 4 comma-separated numbers"),
        ("MUSIQD_WRITE_STARS_KONIQ", "4,3,2,1", "must be 4 increasing finite numbers"),
        ("MUSIQD_WRITE_STARS_NOPE", "1,2,3,4", 'unknown model "nope"'),
        ("MUSIQD_WRITE_RATING_MODEL", "ava", 'the rating model "ava" has no star thresholds'),
    ],
)
def test_environment_errors_name_the_variable(tmp_path: Path, name: str, value: str, problem: str) -> None:
    env = {name: value}
    if name == "MUSIQD_WRITE_RATING_MODEL":
        write(tmp_path / "c.toml", "[write.stars]\nkoniq = [1, 2, 3, 4]\n")
        env["MUSIQD_CONFIG"] = str(tmp_path / "c.toml")
    with pytest.raises(ConfigError) as info:
        load_config(env=env, system_file=tmp_path / "none.toml")
    message = info.value.message
    assert message.startswith(f"config error: environment variable {name}: "), message
    assert problem in message and "\n" not in message


def test_command_line_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "config.toml", 'threads = 3\nroots = ["/volume1/photo"]\n')
    monkeypatch.chdir(tmp_path)
    overrides = {
        "threads": 6,
        "roots": [Path("photos"), "/abs/../elsewhere/"],  # relative to the working directory here
        "device": None,  # not given
        "write.mode": "sidecar",
        "write.rating_model": "none",
        "write.stars.koniq": (1, 2, 3, 4),
        "quiet_hours": (time(1), time(5)),
    }
    config, sources = load_config_with_sources(path, env={"MUSIQD_THREADS": "5"}, overrides=overrides)
    assert config.threads == 6 and sources["threads"] == "command line"
    assert config.roots == (tmp_path / "photos", Path("/elsewhere"))
    assert config.device == "auto" and sources["device"] == "default"
    assert config.write.mode == "sidecar" and config.write.rating_model is None
    assert config.write.star_thresholds["koniq"] == (1.0, 2.0, 3.0, 4.0)
    assert config.quiet_hours == (time(1), time(5))

    with pytest.raises(ConfigError, match=r"^config error: command line: threads: must be at least 1"):
        load_config(path, env={}, overrides={"threads": 0})
    with pytest.raises(ConfigError, match=r'command line: thread: unknown key \(did you mean "threads"\?\)'):
        load_config(path, env={}, overrides={"thread": 2})


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("threads = 0", "threads", "must be at least 1 (got 0)"),
        ("workers = -1", "workers", "must be at least 1 (got -1)"),
        ("threads = 2.5", "threads", "must be an integer (got 2.5)"),
        ("threads = true", "threads", "must be an integer (got true)"),
        ('threads = "4"', "threads", 'must be an integer (got "4")'),
        ("retries = -1", "retries", "must be at least 0"),
        ("max_pixels = 0", "max_pixels", "must be at least 1"),
        ("nice = 20", "nice", "must be at most 19 (got 20)"),
        ("nice = -5", "nice", "must be at least 0 (got -5)"),
        ("rescan_interval = 0", "rescan_interval", "greater than 0 (got 0)"),
        ("poll_interval = -1.5", "poll_interval", "greater than 0 (got -1.5)"),
        ("retry_backoff = inf", "retry_backoff", "finite number of seconds"),
        ("max_wait = nan", "max_wait", "finite number of seconds"),
        ('quiet_period = "5s"', "quiet_period", 'must be a number of seconds (got "5s")'),
        (
            "quiet_period = 700",
            "quiet_period",
            "quiet_period (700 s) must not be longer than max_wait (600 s)",
        ),
        ("max_wait = 2", "max_wait", "quiet_period (5 s) must not be longer than max_wait (2 s)"),
        ('models = ["koniqq"]', "models", 'unknown model "koniqq" (did you mean "koniq"?)'),
        ("models = []", "models", "must name at least one model"),
        ('models = ["koniq", "koniq"]', "models", "names a model twice"),
        ('models = "koniq"', "models", "must be a list of non-empty strings"),
        ('variant = "int8"', "variant", 'unknown value "int8"'),
        ('device = "tpu"', "device", "choose one of auto, cpu, gpu"),
        ('observer = "inotify"', "observer", "choose one of auto, native, poll"),
        ('ioclass = "realtime"', "ioclass", "choose one of idle, best-effort, none"),
        ('roots = ["photos"]', "roots", 'must be an absolute path (got "photos")'),
        ('roots = "/volume1/photo"', "roots", "must be a list of absolute paths"),
        ('roots = ["/volume1/photo", "/volume1/photo/2024"]', "roots", "is inside /volume1/photo"),
        ('roots = ["/a", "/a/"]', "roots", "/a is listed twice"),
        ('include = ["*.jpg", ""]', "include", "must be a list of non-empty strings"),
        ('exclude = ["*.tmp", 3]', "exclude", "must be a list of non-empty strings"),
        ('database = "index.sqlite3"', "database", "must be an absolute path"),
        ('resolution = "huge"', "resolution", 'invalid resolution "huge"'),
        ('quiet_hours = "22-06"', "quiet_hours", 'must look like "22:00-06:00"'),
        ('quiet_hours = "25:00-06:00"', "quiet_hours", 'must look like "22:00-06:00"'),
        ('quiet_hours = "22:00-22:00"', "quiet_hours", "quiet hours would be empty"),
        ("thread = 2", "thread", 'unknown key (did you mean "threads"?)'),
        ('mode = "sidecar"', "mode", "it belongs in the [write] table"),
        ('write = "sidecar"', "write", "must be a table ([write])"),
        ('[write]\nmodee = "sidecar"', "write.modee", 'unknown key (did you mean "mode"?)'),
        ('[write]\nmode = "xmp"', "write.mode", 'unknown value "xmp"'),
        ('[write]\ndng = "keep"', "write.dng", "choose one of sidecar, embed"),
        ('[write]\nsidecar_naming = "both"', "write.sidecar_naming", "choose one of replace, append"),
        ('[write]\nkeywords = "yes"', "write.keywords", 'must be true or false (got "yes")'),
        ('[write]\nrating_model = "koniqq"', "write.rating_model", '(did you mean "koniq"?)'),
        ("[write]\nstars = [1, 2]", "write.stars", "must be a table"),
        ("[write.stars]\nkoniq = [3, 2, 4, 5]", "write.stars.koniq", "must be 4 increasing finite numbers"),
        ("[write.stars]\nkoniq = [1, 2, 3]", "write.stars.koniq", "must be 4 increasing finite numbers"),
        ('[write.stars]\nkoniq = "1,2,3,4"', "write.stars.koniq", "must be a list of 4 increasing numbers"),
        ("[write.stars]\nkoniq = [1, 2, true, 4]", "write.stars.koniq", "must be a list of 4"),
        ("[write.stars]\nkonik = [1, 2, 3, 4]", "write.stars.konik", 'unknown model "konik"'),
        ("[write.stars]\nava = [1, 2, 3, 4]", "write.stars", 'rating model "koniq" has no star'),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    message = config_error(tmp_path, text + "\n")
    assert message.startswith(f"config error: {tmp_path / 'config.toml'}: {key}: "), message
    assert problem in message, message


def test_invalid_toml_gives_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'threads = 2\nroots = ["/a"\nworkers = 1\n')
    assert message.startswith(f"config error: {tmp_path / 'config.toml'}: invalid TOML: ")
    assert "line 3" in message
    assert "line 2" in config_error(tmp_path, "threads = 2\nthreads = 3\n")  # a duplicate key
    (tmp_path / "config.toml").write_bytes(b"threads = 2\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "config.toml", env={})


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError) and ConfigError.exit_code == 2


def test_values_are_normalised(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        'roots = ["~/Pictures", "/volume1//photo/./"]\nresolution = "512"\nquiet_hours = " 9:05 - 17:00 "\n'
        'database = "~/index.sqlite3"\nrescan_interval = 60\n',
    )
    assert config.roots == (Path.home() / "Pictures", Path("/volume1/photo"))
    assert config.resolution == "max_side=512"
    assert config.quiet_hours == (time(9, 5), time(17))
    assert config.database == str(Path.home() / "index.sqlite3")
    assert config.rescan_interval == 60.0 and isinstance(config.rescan_interval, float)
    # "none" clears optional values only; for ioclass it is one of the choices.
    assert load_text(tmp_path, 'ioclass = "none"\n').ioclass == "none"


def test_stars_table_replaces_the_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[write]\nrating_model = "ava"\n[write.stars]\nava = [4, 5, 6, 7]\n')
    assert dict(config.write.star_thresholds) == {"ava": (4.0, 5.0, 6.0, 7.0)}
    # Without a table the built-in thresholds stay.
    assert load_text(tmp_path, '[write]\nmode = "sidecar"\n').write == WritePolicy(mode="sidecar")


def test_quiet_hours() -> None:
    night = Config(quiet_hours=(time(22), time(6)))
    assert (
        night.in_quiet_hours(time(23, 59))
        and night.in_quiet_hours(time(0))
        and night.in_quiet_hours(time(22))
    )
    assert not night.in_quiet_hours(time(6)) and not night.in_quiet_hours(time(12))
    day = Config(quiet_hours=(time(9), time(17)))
    assert (
        day.in_quiet_hours(time(9)) and not day.in_quiet_hours(time(17)) and not day.in_quiet_hours(time(3))
    )
    assert not Config().in_quiet_hours(time(3))


# --- TOML round trip and the example --------------------------------------------------------------------


def roundtrip(tmp_path: Path, config: Config, sources: dict[str, str] | None = None) -> Config:
    path = write(tmp_path / "roundtrip.toml", config.to_toml(sources))
    return load_config(path, env={})


def test_defaults_round_trip(tmp_path: Path) -> None:
    assert roundtrip(tmp_path, Config()) == Config()
    assert load_text(tmp_path, "") == Config()
    assert Config().exclude == DEFAULT_EXCLUDE


_MODELS = sorted(load_catalogue().models)
_segment = st.text(min_size=1, max_size=12).filter(
    lambda s: "/" not in s and "\0" not in s and s not in {".", ".."}
)
_seconds = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False)
_bounds = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=4, unique=True).map(sorted)
_clock = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    stars = {
        m: (b[0], b[1], b[2], b[3])
        for m, b in draw(st.dictionaries(st.sampled_from(_MODELS), _bounds)).items()
    }
    wait, period = sorted(draw(st.lists(_seconds, min_size=2, max_size=2)), reverse=True)
    quiet = draw(st.none() | st.tuples(_clock, _clock).filter(lambda t: t[0] != t[1]))
    return Config(
        roots=tuple(Path("/" + s) for s in draw(st.lists(_segment, max_size=3, unique=True))),
        include=tuple(draw(st.lists(st.text(min_size=1), max_size=4))),
        exclude=tuple(draw(st.lists(st.text(min_size=1), max_size=5))),
        database=draw(st.none() | st.just("postgresql://u:p@db/x") | _segment.map(lambda s: "/" + s)),
        models=tuple(draw(st.lists(st.sampled_from(_MODELS), min_size=1, unique=True))),
        variant=draw(st.sampled_from(load_catalogue().variants)),
        device=draw(st.sampled_from(["auto", "cpu", "gpu"])),
        threads=draw(st.integers(1, 1000)),
        workers=draw(st.integers(1, 64)),
        resolution=draw(st.none() | st.just("full") | st.integers(32, 9999).map(lambda n: f"max_side={n}")),
        max_pixels=draw(st.integers(1, 10**12)),
        write=WritePolicy(
            mode=draw(st.sampled_from(["embed", "sidecar", "index-only"])),
            dng=draw(st.sampled_from(["sidecar", "embed"])),
            sidecar_naming=draw(st.sampled_from(["replace", "append"])),
            rating_model=draw(st.none() | st.sampled_from(sorted(stars))) if stars else None,
            star_thresholds=stars,
            keywords=draw(st.booleans()),
            preserve_mtime=draw(st.booleans()),
        ),
        rescan_interval=draw(_seconds),
        observer=draw(st.sampled_from(["auto", "native", "poll"])),
        poll_interval=draw(_seconds),
        quiet_period=period,
        max_wait=wait,
        quiet_hours=quiet,
        nice=draw(st.integers(0, 19)),
        ioclass=draw(st.sampled_from(["idle", "best-effort", "none"])),
        retries=draw(st.integers(0, 100)),
        retry_backoff=draw(_seconds),
    )


# No example database: it would leave a .hypothesis folder in the checkout.
@settings(max_examples=60, deadline=None, database=None)
@given(config=configs())
def test_to_toml_round_trips(tmp_path_factory: pytest.TempPathFactory, config: Config) -> None:
    tmp_path = tmp_path_factory.mktemp("rt")
    assert roundtrip(tmp_path, config) == config
    # The annotated form (`config show`) is a valid file too.
    sources = dict.fromkeys(["threads", "write.mode", "write.stars"], "a # comment\\ source")
    assert roundtrip(tmp_path, config, sources) == config


def test_example_config_is_the_defaults_plus_roots() -> None:
    config = load_config(EXAMPLE, env={})
    assert config == dataclasses.replace(Config(), roots=(Path("/volume1/photo"),))
    text = EXAMPLE.read_text(encoding="utf-8")
    # Every setting is documented there, the optional ones as comments.
    for field in dataclasses.fields(Config):
        if field.name != "write":
            assert f"\n{field.name} = " in text or f"\n#{field.name} = " in text, field.name
    for key in ("mode", "dng", "sidecar_naming", "rating_model", "keywords", "preserve_mtime"):
        assert f"\n{key} = " in text, key
    assert "[write.stars]" in text


def test_show_annotates_sources_and_hides_passwords(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'threads = 3\ndatabase = "postgresql://musiqd:s3cret@db/musiqd"\n')
    config, sources = load_config_with_sources(path, env={"MUSIQD_WORKERS": "2"}, overrides={"nice": 15})
    shown = config.to_toml(sources, hide_password=True)
    lines = shown.splitlines()
    assert f"threads = 3  # {path}" in lines
    assert "workers = 2  # env MUSIQD_WORKERS" in lines
    assert "nice = 15  # command line" in lines
    assert 'variant = "dynamic-int8"  # default' in lines
    assert "koniq = [2.6, 3.0, 3.4, 3.8]  # default" in lines
    assert any(line.startswith("# quiet_hours = ") and "not set" in line for line in lines)
    assert "s3cret" not in shown and "postgresql://musiqd:***@db/musiqd" in shown
    assert "s3cret" in config.to_toml()
    assert tomllib.loads(shown)["threads"] == 3


# --- warnings -------------------------------------------------------------------------------------------


def test_check_roots(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "file.jpg").write_bytes(b"")
    roots = (tmp_path / "photos", tmp_path / "missing", tmp_path / "file.jpg")
    warnings = check_roots(Config(roots=roots))
    assert warnings == [
        f"roots: {tmp_path / 'missing'} does not exist (a share that is not mounted?)",
        f"roots: {tmp_path / 'file.jpg'} is not a directory",
    ]
    assert check_roots(Config()) == ["roots: none configured: the daemon has nothing to watch"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read and write any folder")
def test_check_roots_permissions(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    (tmp_path / "none").mkdir(mode=0o000)
    warnings = check_roots(Config(roots=(tmp_path / "ro", tmp_path / "none")))
    assert "is not writable" in warnings[0] and "is not readable" in warnings[1]
    ro = Config(roots=(tmp_path / "ro",), write=WritePolicy(mode="index-only"))
    assert check_roots(ro) == []


def test_other_warnings(tmp_path: Path) -> None:
    env = {"MUSIQD_THREDS": "4", "MUSIQD_DATA_DIR": "/x", "MUSIQD_WRITE_STARS_AVA": "1,2,3,4", "HOME": "/"}
    assert check_environment(env) == [
        'environment: MUSIQD_THREDS is not a musiqd setting and is ignored (did you mean "MUSIQD_THREADS"?)'
    ]
    config = Config(roots=(tmp_path,), models=("ava",))
    assert config_warnings(config, {}) == [
        'write.rating_model: "koniq" is not among models (ava): no photo will get stars'
    ]
    assert env_name("write.sidecar_naming") == "MUSIQD_WRITE_SIDECAR_NAMING"


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user without configuration (none in ~ or $MUSIQD_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSIQD_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    env["MUSIQD_MODEL_DIR"] = str(tmp_path / "models")  # nothing installed
    return env


def musiqd(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(MUSIQD + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_config_check_command(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "photos").mkdir()
    good = write(tmp_path / "good.toml", f'roots = ["{tmp_path / "photos"}", "{tmp_path / "gone"}"]\n')
    result = musiqd(["config", "check", "--config", str(good)], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"config OK: {good}\n"
    warnings = result.stderr.splitlines()
    assert f"warning: roots: {tmp_path / 'gone'} does not exist (a share that is not mounted?)" in warnings
    assert any(w.startswith("warning: models: model koniq (dynamic-int8) is not installed") for w in warnings)

    bad = write(tmp_path / "bad.toml", "[write]\nmode = 'xmp'\n")
    result = musiqd(["config", "check"], {**cli_env, "MUSIQD_CONFIG": str(bad)}, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f'config error: {bad}: write.mode: unknown value "xmp"')
    assert result.stderr.count("\n") == 1

    result = musiqd(["config", "check", "-c", str(tmp_path / "nope.toml")], cli_env, tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"config error: {tmp_path / 'nope.toml'}: no such file (given with --config)\n"


def test_config_check_reports_every_problem(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Not only the first: a file with several mistakes and a bad variable get one line each."""
    bad = write(
        tmp_path / "bad.toml",
        'threads = "many"\nobserver = "sometimes"\nfoo = 1\n[write]\nmode = "carve"\n',
    )
    result = musiqd(
        ["config", "check", "--config", str(bad)], {**cli_env, "MUSIQD_WORKERS": "zero"}, tmp_path
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f'config error: {bad}: threads: must be an integer (got "many")',
        f'config error: {bad}: observer: unknown value "sometimes": choose one of auto, native, poll',
        f"config error: {bad}: foo: unknown key",
        f'config error: {bad}: write.mode: unknown value "carve": choose one of embed, sidecar, index-only',
        'config error: environment variable MUSIQD_WORKERS: must be an integer (got "zero")',
    ]
    # Every other command still stops at the first, with the same line.
    first = musiqd(["config", "show", "--config", str(bad)], cli_env, tmp_path)
    assert first.returncode == 2
    assert first.stderr.splitlines() == ["musiqd: error: " + result.stderr.splitlines()[0]]


def test_config_show_names_the_index_an_unset_database_means(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "MUSIQD_DATABASE_URL": "postgresql+psycopg://musiqd:secret@nas/musiqd"}
    shown = musiqd(["config", "show"], env, tmp_path).stdout
    assert "$MUSIQD_DATABASE_URL is used: postgresql+psycopg://musiqd:***@nas/musiqd" in shown
    assert "secret" not in shown


def test_config_show_command(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = write(tmp_path / "c.toml", 'roots = ["/volume1/photo"]\nthreads = 3\n')
    env = {**cli_env, "MUSIQD_WORKERS": "2"}
    result = musiqd(["config", "show", "--config", str(path)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# configuration file: {path}\n")
    assert f"threads = 3  # {path}\n" in result.stdout
    assert "workers = 2  # env MUSIQD_WORKERS\n" in result.stdout
    # What `show` prints is a configuration file with the same effect.
    shown = write(tmp_path / "shown.toml", result.stdout)
    assert load_config(shown, env={}) == load_config(path, env={"MUSIQD_WORKERS": "2"})

    result = musiqd(["config", "show"], {**cli_env, "MUSIQD_THREADS": "0"}, tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr
        == "musiqd: error: config error: environment variable MUSIQD_THREADS: must be at least 1 (got 0)\n"
    )


def test_watch_options_are_checked_like_the_file(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "photos").mkdir()
    path = write(tmp_path / "c.toml", f'roots = ["{tmp_path / "photos"}"]\n')
    cases = [
        (["--threads", "0"], "threads: must be at least 1 (got 0)"),
        (["--write-mode", "xmp"], 'write.mode: unknown value "xmp"'),
        (["--model", "koniq", "--model", "nope"], 'models: unknown model "nope"'),
        (["--quiet-hours", "25:00-06:00"], "quiet_hours:"),
        (["--poll-interval", "0"], "poll_interval: must be a finite number of seconds greater than 0"),
    ]
    for options, problem in cases:
        result = musiqd(["watch", "--config", str(path), *options], cli_env, tmp_path)
        assert result.returncode == 2, (options, result.stderr)
        assert result.stderr.startswith(f"musiqd: error: config error: command line: {problem}"), (
            result.stderr
        )
        assert result.stderr.count("\n") == 1


def test_burst_settings_are_checked_and_named(tmp_path: Path) -> None:
    from musiq_daemon.config import load_config

    good = tmp_path / "good.toml"
    good.write_text("cull = false\nburst_gap = 1.5\nburst_distance = 10\n[write]\nbest_of_burst = false\n")
    config = load_config(good)
    assert (config.cull, config.burst_gap, config.burst_distance) == (False, 1.5, 10)
    assert config.write.best_of_burst is False
    for text, message in (
        ("burst_distance = 64\n", "burst_distance: must be at most 63"),
        ("burst_gap = 0\n", "burst_gap: must be a finite number of seconds greater than 0"),
        ("cull = 2\n", "cull:"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(bad)
