"""The one place the gateway reads its configuration files.

* :func:`load_settings`: :class:`~service.settings.Settings` from keyword overrides (the CLI), the
  ``SEPVIT_*`` environment, then a YAML settings file (``config_file`` or
  ``SEPVIT_CONFIG_FILE``), strongest first; a ``models_file`` replaces ``models``.
* :func:`read_model_config`: a model's TorchServe-style ``model-config.yaml``.
* :func:`read_tokens`: the accepted bearer tokens, the token file included.

Nothing is read at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from .settings import ModelConfigFile, ModelSpec, Settings

__all__ = ["load_settings", "read_model_config", "read_models_file", "read_tokens"]


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, merging nested mappings (``SEPVIT_A__B`` over the file's ``a``)."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            value = _merge(below, value)
        out[key] = value
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`: ``overrides`` (``None`` values are unset), then the environment,
    then the YAML file, then the defaults."""
    path = config_file or os.environ.get("SEPVIT_CONFIG_FILE")
    values: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values = data
    values = _merge(values, EnvSettingsSource(Settings)())
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("models_file") is not None:
        values["models"] = read_models_file(Path(values["models_file"]))
    return Settings(**values)


def read_models_file(path: Path) -> list[ModelSpec]:
    """A model list: a YAML list, or a mapping with a ``models`` key."""
    data = _read_yaml(path)
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of models")
    return [ModelSpec.model_validate(m) for m in data]


def read_model_config(spec: ModelSpec) -> ModelConfigFile:
    """The ``model-config.yaml`` beside the checkpoint, if any, or the one the entry names (which
    must exist: a misspelt path would otherwise serve with defaults, unnoticed)."""
    path = spec.model_config_file or spec.checkpoint.parent / "model-config.yaml"
    if not path.is_file():
        if spec.model_config_file is not None:
            raise ValueError(f"model {spec.name!r}: model_config_file {path} is not a file")
        return ModelConfigFile()
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    try:
        return ModelConfigFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


def read_tokens(settings: Settings) -> list[bytes]:
    """Accepted bearer tokens (settings plus the token file), as bytes."""
    out = [t.get_secret_value().encode() for t in settings.auth_tokens]
    if settings.auth_token_file is not None:
        for line in settings.auth_token_file.read_text().splitlines():
            if line.strip():
                out.append(line.strip().encode())
    return [t for t in out if t]
