"""``sepvit-archive``: build a TorchServe model archive (``.mar``) from a checkpoint.

A native checkpoint is archived as it is. An mmdet/mmseg checkpoint of a registered head is
loaded (strictly, see :func:`sepvit.load_model`) and written once as a native checkpoint, so the
archive carries its preprocessing preset and class names, and the worker never unpickles.

The archive is self-contained apart from third-party packages: it holds the checkpoint as
``model.safetensors``, the ``model-config.yaml`` (TorchServe frontend settings plus the
``handler:`` section read by :class:`service.torchserve.handler.SepViTHandler`), the entry
point (as ``handler.py``), the ``sepvit`` and ``handlers`` sources and the error table
(``service/errors.py``), so a TorchServe with torch, numpy, pillow, safetensors and pyyaml
installed can serve it without this project being installed. Like the entry point, this module
imports only what the archive carries (``tests/test_layering.py``).

    sepvit-archive --checkpoint model_store/sepvit_lite_shapes_cls/model.safetensors \\
        --config model_store/sepvit_lite_shapes_cls/model-config.yaml \\
        --name sepvit_lite_shapes_cls --export-path archives --force
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sepvit", "handlers")
# the one error table (standard library and typing_extensions only), which the entry point
# answers statuses from
MODULES = ("service/__init__.py", "service/errors.py")
# TorchServe frontend keys this project sets in model-config.yaml (others pass through)
FRONTEND_KEYS = {
    "minWorkers": int,
    "maxWorkers": int,
    "batchSize": int,
    "maxBatchDelay": int,
    "responseTimeout": int,
    "startupTimeout": int,
}


class ArchiveError(ValueError):
    pass


def validate_config(path: Path) -> dict[str, Any]:
    """Check a model-config.yaml before it is packed (TorchServe only reports errors at load)."""
    from handlers.pipeline import PipelineConfig

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ArchiveError(f"{path}: expected a mapping")
    for key, kind in FRONTEND_KEYS.items():
        if key in data and (not isinstance(data[key], kind) or data[key] < 0):
            raise ArchiveError(f"{path}: {key} must be a non-negative integer")
    if data.get("batchSize", 1) < 1:
        raise ArchiveError(f"{path}: batchSize must be at least 1")
    handler = dict(data.get("handler") or {})
    handler.pop("checkpoint", None)
    try:
        PipelineConfig.from_mapping(handler)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"{path}: handler section: {exc}") from exc
    return data


def _copy_sources(dest: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for module in MODULES:
        (dest / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / module, dest / module)


def build_archive(
    checkpoint: str | Path,
    config: str | Path,
    name: str,
    export_path: str | Path,
    version: str = "1.0",
    force: bool = False,
) -> Path:
    """Build ``<export_path>/<name>.mar`` and return its path."""
    from model_archiver.model_packaging import generate_model_archive

    from sepvit.checkpoint import is_native_checkpoint, read_metadata, save_checkpoint
    from sepvit.registry import load_model

    checkpoint, config, export = Path(checkpoint), Path(config), Path(export_path)
    if not checkpoint.is_file():
        raise ArchiveError(f"checkpoint not found: {checkpoint}")
    native = is_native_checkpoint(checkpoint)
    if native:
        read_metadata(checkpoint)  # valid metadata, or CheckpointError
    validate_config(config)
    export.mkdir(parents=True, exist_ok=True)
    target = export / f"{name}.mar"
    if target.exists() and not force:
        raise ArchiveError(f"{target} exists; pass --force to overwrite")
    with tempfile.TemporaryDirectory(prefix="sepvit-archive-") as tmp:
        stage = Path(tmp)
        if native:
            shutil.copy2(checkpoint, stage / "model.safetensors")
        else:  # OpenMMLab: load strictly (or CheckpointError), store natively
            provenance = {"converted_from": checkpoint.name}
            save_checkpoint(
                load_model(checkpoint), stage / "model.safetensors", provenance=provenance
            )
        _copy_sources(stage / "src")  # the archiver copies this folder's *contents* to the root
        argv = [
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(Path(__file__).with_name("handler.py")),
            "--serialized-file",
            str(stage / "model.safetensors"),
            "--extra-files",
            str(stage / "src"),
            "--config-file",
            str(config),
            "--export-path",
            str(export),
            "--archive-format",
            "default",
        ]
        if force:
            argv.append("--force")
        saved = sys.argv
        try:
            sys.argv = ["torch-model-archiver", *argv]
            generate_model_archive()
        finally:
            sys.argv = saved
    if not target.is_file():
        raise ArchiveError(f"torch-model-archiver did not write {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sepvit-archive", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="native .safetensors or mmdet/mmseg .pth checkpoint"
    )
    p.add_argument("--config", required=True, help="model-config.yaml for TorchServe")
    p.add_argument("--name", required=True, help="model name (the archive is <name>.mar)")
    p.add_argument(
        "--export-path", default="archives", help="TorchServe's model store (default: archives)"
    )
    p.add_argument("--version", default="1.0")
    p.add_argument("--force", action="store_true", help="overwrite an existing archive")
    a = p.parse_args(argv)
    from sepvit.checkpoint import CheckpointError

    try:
        path = build_archive(a.checkpoint, a.config, a.name, a.export_path, a.version, a.force)
    except (ArchiveError, CheckpointError, OSError) as exc:
        print(f"sepvit-archive: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
