"""Official MUSIQ checkpoints against the official scores (runs only where real weights are present).

Set ``MUSIQ_CHECKPOINT_DIR`` to a folder holding the official ``koniq_ckpt.npz``, ``spaq_ckpt.npz``,
``paq2piq_ckpt.npz`` and/or ``ava_ckpt.npz``, and the five TID2013 reference images ``I03``, ``I04``,
``I06``, ``I08``, ``I19`` (``.bmp``, any case) in that folder or in ``$MUSIQ_TID2013_DIR``. The expected
values are the official implementation's outputs (raw model scale), from the project's spec notes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.decode import decode_image
from musiq_daemon.model.checkpoint import load_checkpoint
from musiq_daemon.model.reference import forward, raw_score
from musiq_daemon.model.store import install_from_checkpoint
from musiq_daemon.preprocess import make_tokens
from musiq_daemon.runtime import open_engine

IMAGES = ("I03", "I04", "I06", "I08", "I19")
OFFICIAL = {
    "koniq": (12.494, 75.332, 73.429, 75.188, 36.938),
    "spaq": (17.685, 70.492, 78.740, 79.015, 49.105),
    "paq2piq": (46.035, 72.660, 73.625, 74.361, 69.006),
    "ava": (3.398, 5.648, 4.635, 5.186, 4.128),
}
CKPT_DIR = os.environ.get("MUSIQ_CHECKPOINT_DIR")
pytestmark = pytest.mark.skipif(
    not CKPT_DIR, reason="MUSIQ_CHECKPOINT_DIR is not set: the official weights are ~155 MB downloads"
)


def _find_image(name: str) -> Path | None:
    for folder in filter(None, (os.environ.get("MUSIQ_TID2013_DIR"), CKPT_DIR)):
        for path in Path(folder).iterdir():
            if path.stem.upper() == name and path.suffix.lower() in (".bmp", ".png"):
                return path
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model_id", list(OFFICIAL))
def test_official_tid2013_scores(model_id: str, tmp_path: Path) -> None:
    spec = load_catalogue().get(model_id)
    ckpt_path = Path(str(CKPT_DIR)) / spec.file
    if not ckpt_path.is_file():
        pytest.skip(f"{spec.file} is not in MUSIQ_CHECKPOINT_DIR")
    images = [_find_image(name) for name in IMAGES]
    if None in images:
        pytest.skip(
            "the TID2013 images I03 I04 I06 I08 I19 are not in MUSIQ_CHECKPOINT_DIR or MUSIQ_TID2013_DIR"
        )
    ckpt = load_checkpoint(ckpt_path, num_classes=spec.head, model_id=model_id)
    # The official pipeline scores the native resolution (these images are 512x384: N = 385).
    sequences = [make_tokens(decode_image(p).pixels) for p in images if p is not None]
    assert all(s.num_tokens == 385 for s in sequences)
    reference = [raw_score(forward(ckpt.params, ckpt.config, s.tokens)) for s in sequences]
    assert reference == pytest.approx(OFFICIAL[model_id], abs=2e-3)
    fp32, int8 = install_from_checkpoint(ckpt_path, model_id, ["fp32", "dynamic-int8"], root=tmp_path)
    for installed, rel in ((fp32, 1e-4), (int8, 0.05)):
        engine = open_engine(installed.path, num_outputs=spec.head, device="cpu")
        got = [raw_score(engine.run(s.tokens)) for s in sequences]
        assert got == pytest.approx(reference, rel=rel), installed.variant
