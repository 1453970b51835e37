"""The model catalogue: manifest contents and the raw -> reported score mapping."""

from __future__ import annotations

import math

import pytest

from musiq_daemon.catalogue import load_catalogue, parse_manifest
from musiq_daemon.errors import UsageError


def test_manifest_lists_the_official_models() -> None:
    cat = load_catalogue()
    assert cat.default_model == "koniq"
    assert cat.default_variant == "dynamic-int8"
    assert set(cat.variants) == {"fp32", "fp16", "dynamic-int8"}
    assert set(cat.models) == {"koniq", "spaq", "paq2piq", "ava"}
    for spec in cat.models.values():
        assert spec.url == f"https://storage.googleapis.com/gresearch/musiq/{spec.file}"
        assert spec.file == f"{spec.id}_ckpt.npz"
    assert cat.get("ava").head == 10 and cat.get("ava").mapping == "softmax-mean"
    assert all(cat.get(m).head == 1 and cat.get(m).mapping == "mos-100" for m in ("koniq", "spaq", "paq2piq"))


@pytest.mark.parametrize(("raw", "reported"), [(0.0, 1.0), (50.0, 3.0), (100.0, 5.0), (75.332, 4.01328)])
def test_mos_mapping(raw: float, reported: float) -> None:
    assert load_catalogue().get("koniq").reported(raw) == pytest.approx(reported)


def test_mapping_clamps_to_the_scale_but_rejects_nan() -> None:
    koniq, ava = load_catalogue().get("koniq"), load_catalogue().get("ava")
    assert koniq.reported(130.0) == 5.0 and koniq.reported(-5.0) == 1.0
    assert ava.reported(5.648) == pytest.approx(5.648)
    with pytest.raises(ValueError):
        koniq.reported(math.nan)


def test_unknown_model_and_variant() -> None:
    cat = load_catalogue()
    with pytest.raises(UsageError, match=r"unknown model 'nope'.*koniq"):
        cat.get("nope")
    with pytest.raises(UsageError, match="unknown variant 'int4'"):
        cat.check_variant("int4")


def test_manifest_validation() -> None:
    bad = """
schema = 1
default_model = "x"
default_variant = "fp32"
variants = ["fp32"]
[models.x]
title = "x"
file = "x_ckpt.npz"
url = "http://example.invalid/x"
head = 1
mapping = "median"
scale = [1, 5]
"""
    with pytest.raises(ValueError, match="unknown mapping"):
        parse_manifest(bad)


def test_star_thresholds_live_with_each_model() -> None:
    """Adding a model is one manifest entry: its default star thresholds are part of it."""
    from musiq_daemon.catalogue import load_catalogue
    from musiq_daemon.metadata.writer import WritePolicy

    catalogue = load_catalogue()
    assert all(spec.stars is not None for spec in catalogue.models.values())
    assert WritePolicy().star_thresholds == {m: s.stars for m, s in catalogue.models.items()}
    with pytest.raises(ValueError, match="4 star thresholds"):
        parse_manifest(
            'default_model = "x"\ndefault_variant = "fp32"\nvariants = ["fp32"]\n[models.x]\ntitle = "x"\n'
            'file = "x.npz"\nurl = "u"\nhead = 1\nmapping = "mos-100"\nscale = [1.0, 5.0]\nstars = [1.0]\n'
        )
