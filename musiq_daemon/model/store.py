"""Installed models: ``<models dir>/<id>/<variant>.tflite`` with a ``<variant>.json`` beside it.

The JSON (written by the converter) makes every score traceable: model id, variant, the sha256 of the
source checkpoint, the converter version and the sha256 of the ``.tflite`` itself. A model is only used
when the file still matches the recorded checksum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musiq_daemon.catalogue import Catalogue, ModelSpec, load_catalogue
from musiq_daemon.errors import ModelFileError, ModelNotInstalledError
from musiq_daemon.model.config import GRAPH_FORMAT
from musiq_daemon.paths import models_dir


@dataclass(frozen=True)
class InstalledModel:
    spec: ModelSpec
    variant: str
    path: Path
    metadata: dict[str, Any]

    @property
    def checkpoint_sha256(self) -> str:
        return str(self.metadata["checkpoint_sha256"])

    @property
    def tflite_sha256(self) -> str:
        return str(self.metadata["tflite_sha256"])

    @property
    def version(self) -> str:
        """The model version recorded with every score: the source checkpoint's sha256, shortened.

        Variant and ``.tflite`` checksum are recorded separately, so a score traces back to the exact
        weights and the exact converted file.
        """
        return self.checkpoint_sha256[:12]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def model_path(model_id: str, variant: str, root: Path | None = None) -> Path:
    return (root or models_dir()) / model_id / f"{variant}.tflite"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_metadata(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(
            f"{meta_path} is missing: re-create the model with 'musiqd models convert'"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{meta_path} is not a musiqd model description")
    for key in ("model_id", "variant", "checkpoint_sha256", "tflite_sha256", "num_classes"):
        if key not in data:
            raise ModelFileError(
                f"{meta_path} lacks '{key}': re-create the model with 'musiqd models convert'"
            )
    return data


def load_installed(
    model_id: str,
    variant: str,
    *,
    root: Path | None = None,
    catalogue: Catalogue | None = None,
    verify_checksum: bool = True,
) -> InstalledModel:
    """Find an installed model, check it against its JSON and the catalogue, or explain how to install it."""
    catalogue = catalogue or load_catalogue()
    spec = catalogue.get(model_id)
    catalogue.check_variant(variant)
    path = model_path(model_id, variant, root)
    if not path.is_file():
        raise ModelNotInstalledError(
            f"model {model_id} ({variant}) is not installed in {path.parent}: run 'musiqd models fetch "
            f"{model_id}', or 'musiqd models convert --checkpoint {spec.file}' with a checkpoint you have"
        )
    meta = _read_metadata(path)
    if meta["model_id"] != model_id or meta["variant"] != variant or int(meta["num_classes"]) != spec.head:
        raise ModelFileError(
            f"{path} does not hold {model_id} ({variant}): re-create it with 'musiqd models convert'"
        )
    if meta.get("graph_format") != GRAPH_FORMAT:
        raise ModelFileError(
            f"{path} was converted by an older musiqd (graph format {meta.get('graph_format', 1)}, this one "
            f"reads {GRAPH_FORMAT}): re-create it with 'musiqd models convert --checkpoint {spec.file}'"
        )
    if verify_checksum and sha256_file(path) != meta["tflite_sha256"]:
        raise ModelFileError(
            f"{path} is damaged (checksum differs from {path.with_suffix('.json').name}): re-create it"
        )
    return InstalledModel(spec=spec, variant=variant, path=path, metadata=meta)


def list_installed(root: Path | None = None, catalogue: Catalogue | None = None) -> list[InstalledModel]:
    """Every installed model that is intact (damaged ones are left out; `models verify` reports them)."""
    catalogue = catalogue or load_catalogue()
    found: list[InstalledModel] = []
    for model_id in sorted(catalogue.models):
        for variant in catalogue.variants:
            if model_path(model_id, variant, root).is_file():
                try:
                    found.append(
                        load_installed(
                            model_id, variant, root=root, catalogue=catalogue, verify_checksum=False
                        )
                    )
                except (ModelFileError, ModelNotInstalledError):
                    continue
    return found


def install_from_checkpoint(
    checkpoint_path: Path,
    model_id: str,
    variants: Sequence[str],
    *,
    root: Path | None = None,
    catalogue: Catalogue | None = None,
    on_variant: Callable[[str], None] | None = None,
) -> list[InstalledModel]:
    """Validate an official checkpoint for ``model_id`` and convert it to each variant (needs TensorFlow)."""
    from musiq_daemon.model.checkpoint import load_checkpoint
    from musiq_daemon.model.convert import convert_checkpoint

    catalogue = catalogue or load_catalogue()
    spec = catalogue.get(model_id)
    for variant in variants:
        catalogue.check_variant(variant)
    checkpoint = load_checkpoint(checkpoint_path, num_classes=spec.head, model_id=model_id)
    installed: list[InstalledModel] = []
    for variant in variants:
        if on_variant is not None:
            on_variant(variant)
        out = model_path(model_id, variant, root)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(
            checkpoint.params,
            checkpoint.config,
            variant=variant,
            out_path=out,
            metadata={
                "model_id": model_id,
                "mapping": spec.mapping,
                "checkpoint_file": checkpoint_path.name,
                "checkpoint_path": str(checkpoint_path.resolve()),
                "checkpoint_sha256": checkpoint.sha256,
            },
        )
        installed.append(load_installed(model_id, variant, root=root, catalogue=catalogue))
    return installed
