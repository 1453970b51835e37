"""The service unit: the hardening the daemon is meant to run under, checked by systemd's own tools where
they are installed (they need no running systemd)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from musiq_daemon.config import Config, load_config

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "musiqd.service"
DROP_IN = SYSTEMD / "photos.conf.example"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order. Unit files allow repeated keys, so configparser does not fit."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def one(unit: dict[tuple[str, str], list[str]], key: str, section: str = "Service") -> str:
    values = unit[(section, key)]
    assert len(values) == 1, (key, values)
    return values[0]


def test_unit_hardening() -> None:
    unit = directives(UNIT)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/local/bin/musiqd watch",
        "User": "musiqd",
        "Group": "musiqd",
        "WatchdogSec": "120",
        "Restart": "on-failure",
        "StateDirectory": "musiqd",
        "ConfigurationDirectory": "musiqd",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryMax": "1500M",
        "Nice": "10",
        "IOSchedulingClass": "idle",
        "SystemCallFilter": "@system-service",
        "UMask": "0022",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectControlGroups": "true",
        "RestrictNamespaces": "true",
        "LockPersonality": "true",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert one(unit, key) == value, key
    # The photo roots come from a drop-in; the unit itself only resets the list.
    assert one(unit, "ReadWritePaths") == ""
    assert "PYTHONUNBUFFERED=1" in one(unit, "Environment").split()
    # Configuration errors (2) and missing models (3) are not fixed by restarting.
    assert set(one(unit, "RestartPreventExitStatus").split()) == {"2", "3"}
    # The GPU's render nodes stay reachable, so not PrivateDevices=true.
    assert one(unit, "PrivateDevices") == "false" and one(unit, "DeviceAllow") == "char-drm rw"
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    # The daemon reloads its configuration on SIGHUP.
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # The watchdog must not fire while a stop is still within its timeout, and a restart must come.
    assert int(one(unit, "TimeoutStopSec")) <= int(one(unit, "WatchdogSec"))
    assert int(one(unit, "RestartSec")) > 0


def test_drop_in_example_names_the_example_root() -> None:
    drop_in = directives(DROP_IN)
    example_roots = load_config(SYSTEMD / "config.example.toml", env={}).roots
    assert drop_in[("Service", "ReadWritePaths")] == [str(r) for r in example_roots]


def test_unit_defaults_match_the_config_defaults() -> None:
    # Under systemd the unit sets the priorities; elsewhere the daemon applies the same defaults itself.
    unit = directives(UNIT)
    assert int(one(unit, "Nice")) == Config().nice
    assert one(unit, "IOSchedulingClass") == Config().ioclass


def verify_copy(tmp_path: Path) -> Path:
    """The unit and the example drop-in, with ExecStart pointed at an executable that exists here.

    `systemd-analyze verify` insists that ExecStart's program exists; the installed /usr/local/bin/musiqd
    does not in a test run, so a drop-in replaces it by a stand-in (the unit file itself is used as is).
    """
    unit = tmp_path / "musiqd.service"
    shutil.copyfile(UNIT, unit)
    drop_ins = tmp_path / "musiqd.service.d"
    drop_ins.mkdir()
    shutil.copyfile(DROP_IN, drop_ins / "photos.conf")
    stand_in = tmp_path / "musiqd"
    stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stand_in.chmod(0o755)
    (drop_ins / "zz-test-exec.conf").write_text(
        f"[Service]\nExecStart=\nExecStart={stand_in} watch\n", encoding="utf-8"
    )
    return unit


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = verify_copy(tmp_path)
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown or misplaced directives are only warnings (exit 0), so any output counts as a failure.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_security(tmp_path: Path) -> None:
    unit = verify_copy(tmp_path)
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("this systemd-analyze cannot assess a unit file offline (systemd < 250)")
    match = re.search(r"Overall exposure level for musiqd\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    # 0 = fully locked down, 10 = unprotected. What is left open is documented in the unit: the GPU
    # devices, write-execute memory, AF_INET for a PostgreSQL index, the host's users and file system.
    assert float(match.group(1)) <= 2.5, result.stdout


WORKER_UNIT = SYSTEMD / "musiqd-worker.service"


def test_worker_unit_is_the_service_unit_but_for_what_a_worker_is() -> None:
    """The worker's unit keeps every hardening of the daemon's; it runs `musiqd worker`, has no reload
    (a worker reads its configuration at start), and no inotify to keep."""
    service, worker = directives(UNIT), directives(WORKER_UNIT)
    assert one(worker, "ExecStart") == "/usr/local/bin/musiqd worker"
    assert ("Service", "ExecReload") not in worker
    assert one(worker, "SyslogIdentifier") == "musiqd-worker"
    different = {key for key in service.keys() | worker.keys() if service.get(key) != worker.get(key)}
    assert different == {
        ("Service", "ExecStart"), ("Service", "ExecReload"), ("Service", "SyslogIdentifier"),
        ("Unit", "Description"),
    }  # fmt: skip


@needs_analyze
def test_systemd_analyze_verify_worker_unit(tmp_path: Path) -> None:
    unit = tmp_path / "musiqd-worker.service"
    shutil.copyfile(WORKER_UNIT, unit)
    drop_ins = tmp_path / "musiqd-worker.service.d"
    drop_ins.mkdir()
    stand_in = tmp_path / "musiqd"
    stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stand_in.chmod(0o755)
    (drop_ins / "zz-test-exec.conf").write_text(f"[Service]\nExecStart=\nExecStart={stand_in} worker\n")
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
