"""Installed models: conversion into the model directory, metadata, checksums, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from musiq_daemon.errors import CheckpointError, ModelFileError, ModelNotInstalledError
from musiq_daemon.model.store import install_from_checkpoint, list_installed, load_installed, sha256_file


def test_installed_models_are_traceable(models_root: Path, tiny_checkpoints: dict[str, Path]) -> None:
    m = load_installed("koniq", "dynamic-int8", root=models_root)
    assert m.path == models_root / "koniq" / "dynamic-int8.tflite"
    assert m.metadata["checkpoint_sha256"] == sha256_file(tiny_checkpoints["koniq"])
    assert m.version == m.metadata["checkpoint_sha256"][:12]
    assert m.tflite_sha256 == sha256_file(m.path)
    assert m.metadata["checkpoint_file"] == "koniq_ckpt.npz"
    assert {(x.spec.id, x.variant) for x in list_installed(models_root)} == {
        ("koniq", "fp32"),
        ("koniq", "dynamic-int8"),
        ("ava", "fp32"),
    }


def test_not_installed_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalledError, match="musiqd models fetch spaq") as info:
        load_installed("spaq", "dynamic-int8", root=tmp_path)
    assert "\n" not in str(info.value)


def test_damaged_model_is_refused(tmp_path: Path, models_root: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    path = root / "koniq" / "fp32.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged"):
        load_installed("koniq", "fp32", root=root)
    path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_installed("koniq", "fp32", root=root)
    meta = json.loads((root / "ava" / "fp32.json").read_text(encoding="utf-8"))
    meta["model_id"] = "koniq"
    (root / "ava" / "fp32.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelFileError, match="does not hold ava"):
        load_installed("ava", "fp32", root=root)


def test_model_of_an_older_musiqd_asks_for_reconversion(tmp_path: Path, models_root: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    meta_path = root / "koniq" / "fp32.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["graph_format"]  # what models converted before the stem/encoder split carry
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"older musiqd .*models convert --checkpoint koniq_ckpt.npz"):
        load_installed("koniq", "fp32", root=root)
    assert [m.variant for m in list_installed(root) if m.spec.id == "koniq"] == ["dynamic-int8"]


def test_wrong_head_checkpoint_is_refused(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    # An AVA checkpoint (10 outputs) cannot become the koniq model (1 output).
    with pytest.raises(CheckpointError, match="10"):
        install_from_checkpoint(tiny_checkpoints["ava"], "koniq", ["fp32"], root=tmp_path)
    assert not (tmp_path / "koniq" / "fp32.tflite").exists()
