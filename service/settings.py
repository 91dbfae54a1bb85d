"""Gateway settings: one pydantic-settings class.

Sources, strongest first: keyword arguments (the CLI), environment variables (``SEPVIT_``
prefix, nested with ``__``), an optional YAML file (``config_file`` / ``SEPVIT_CONFIG_FILE``),
then defaults. Nothing is read at import time: :func:`load_settings` reads when it is called.

The model list is ``models`` (in the YAML, or JSON in ``SEPVIT_MODELS``) or a separate YAML file
(``models_file``: a list, or a mapping with a ``models`` key). Each model may also have a
TorchServe-style ``model-config.yaml`` beside its checkpoint; its ``batchSize``,
``maxBatchDelay`` and ``handler`` section fill in what the model entry leaves unset.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from handlers.decode import DECODE_BYTES_PER_PIXEL

__all__ = ["DEMO_MODELS", "MemoryBudget", "ModelSpec", "Settings", "load_settings"]

TASKS = ("classify", "detect", "segment")

MiB = 1024 * 1024
# The worst-case memory model (docs/reliability.md "Memory budget"; tests/deploy ties it to the
# Helm chart): the process at rest, plus every admitted request's body held BODY_COPIES times
# (the bytes read, the images cut out of them or base64-decoded, and a protobuf or JSON copy),
# plus the embedded backend's decoded pixels (one shared budget of max_pixels, each pixel costing
# DECODE_BYTES_PER_PIXEL at the peak of a decode; the model inputs themselves are a few MB).
BASELINE_BYTES = 512 * MiB
BODY_COPIES = 3
# an OIP tensor's rank; its element count is capped by max_images_per_request
MAX_TENSOR_RANK = 8

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("sepvit_config_file", default=None)


class ModelSpec(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    checkpoint: Path
    task: Literal["classify", "detect", "segment"] | None = None  # None: from the checkpoint
    runtime: Literal["eager", "onnxruntime", "tensorrt", "bf16", "int8", "auto"] | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=256)
    max_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    adaptive_batching: bool | None = None  # None: the server's adaptive_batching
    max_queue: int | None = Field(default=None, ge=1)  # images waiting, beyond the running batch
    handler: dict[str, Any] = Field(default_factory=dict)  # handlers.PipelineConfig options
    model_config_file: Path | None = None  # default: model-config.yaml beside the checkpoint

    def torchserve_config(self) -> dict[str, Any]:
        """The ``model-config.yaml`` beside the checkpoint (or the named one), if present."""
        path = self.model_config_file or self.checkpoint.parent / "model-config.yaml"
        if not path.is_file():
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        return data


def _demo(name: str, task: str) -> ModelSpec:
    return ModelSpec(name=name, task=task, checkpoint=Path(f"model_store/{name}/model.safetensors"))  # type: ignore[arg-type]


DEMO_MODELS = [
    _demo("sepvit_lite_shapes_cls", "classify"),
    _demo("sepvit_lite_shapes_det", "detect"),
    _demo("sepvit_lite_shapes_seg", "segment"),
    _demo("sepvit_lite_shapes_inst", "detect"),  # Mask R-CNN: instance masks
]


class Settings(BaseSettings):
    """Everything the gateway reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="SEPVIT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    # network
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int | None = Field(default=8001, ge=0, le=65535)  # None: no gRPC server
    workers: int = Field(default=1, ge=1, le=64)
    # models and backend
    backend: Literal["embedded", "torchserve"] = "embedded"
    models: list[ModelSpec] = Field(default_factory=lambda: [m.model_copy() for m in DEMO_MODELS])
    models_file: Path | None = None
    require_all_models: bool = True  # server readiness needs every model, else any one
    torch_threads: int = Field(default=1, ge=0)  # intra-op threads; 0 leaves torch's default
    warmup: bool = True
    # batching defaults (per model overrides in ModelSpec)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_delay_ms: float = Field(default=5.0, ge=0, le=10_000)
    # stop waiting once the queue holds as many images as the previous batch (service/batcher.py)
    adaptive_batching: bool = True
    # decode and preprocess the next batch in a second thread while the current one infers
    pipelining: bool = True
    max_queue: int = Field(default=64, ge=1)
    # limits
    max_body_bytes: int = Field(default=8 * MiB, ge=1024)
    max_images_per_request: int = Field(default=16, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)  # per image; also the decode budget
    max_concurrent_requests: int = Field(default=32, ge=1)  # HTTP and gRPC together
    # a client (bearer token, else peer address) may hold at most its fair share of the
    # concurrency limit while others wait: limit / clients holding slots (at least 1)
    fair_share: bool = False
    # requests one ModelStreamInfer stream may have in flight before it stops reading
    max_stream_in_flight: int = Field(default=16, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body must arrive in time: 408
    retry_after_s: int = Field(default=1, ge=1)
    # watchdog: a batch still running this long after its requests' deadline marks the model
    # failed; its worker is then rebuilt up to watchdog_restarts times
    watchdog_margin_s: float = Field(default=10.0, gt=0)
    watchdog_restarts: int = Field(default=3, ge=0)
    # liveness fails when the event loop has not turned for this long
    liveness_stall_s: float = Field(default=5.0, gt=0)
    # auth: bearer tokens (any one matches); the file holds one token a line
    auth_tokens: list[SecretStr] = Field(default_factory=list)
    auth_token_file: Path | None = None
    # shutdown
    drain_delay_s: float = Field(default=0.0, ge=0)  # readiness false this long before closing
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # logging
    log_level: str = "info"
    log_json: bool = True
    # torchserve backend: TorchServe's gRPC inference address, its inference key (or the file
    # holding it: TorchServe's key_file.json, re-read when it changes), per-call timeout, health
    # check period, and gateway model name -> TorchServe model name (default: the same name)
    torchserve_address: str = "127.0.0.1:7070"
    torchserve_token: SecretStr | None = None
    torchserve_token_file: Path | None = None
    torchserve_timeout_s: float = Field(default=30.0, gt=0)
    torchserve_health_interval_s: float = Field(default=2.0, gt=0, le=300)
    torchserve_models: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, path))

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown log level {v!r}")
        return v.lower()

    @model_validator(mode="after")
    def _models(self) -> Settings:
        if self.models_file is not None:
            data = yaml.safe_load(self.models_file.read_text())
            if isinstance(data, dict):
                data = data.get("models")
            if not isinstance(data, list):
                raise ValueError(f"{self.models_file}: expected a list of models")
            self.models = [ModelSpec.model_validate(m) for m in data]
            self.models_file = None
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        unknown = sorted(set(self.torchserve_models) - set(names))
        if unknown:
            raise ValueError(f"torchserve_models names models that are not configured: {unknown}")
        return self

    def memory_budget(self) -> MemoryBudget:
        """Worst-case memory of one gateway process with these settings."""
        images = self.max_pixels * DECODE_BYTES_PER_PIXEL if self.backend == "embedded" else 0
        bodies = self.max_concurrent_requests * self.max_body_bytes * BODY_COPIES
        return MemoryBudget(baseline=BASELINE_BYTES, bodies=bodies, images=images)

    def tokens(self) -> list[bytes]:
        """Accepted bearer tokens (settings plus the token file), as bytes."""
        out = [t.get_secret_value().encode() for t in self.auth_tokens]
        if self.auth_token_file is not None:
            for line in self.auth_token_file.read_text().splitlines():
                if line.strip():
                    out.append(line.strip().encode())
        return [t for t in out if t]


class MemoryBudget(BaseModel):
    baseline: int
    bodies: int
    images: int

    @property
    def total(self) -> int:
        return self.baseline + self.bodies + self.images


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from keyword overrides, the environment and a YAML file."""
    path = config_file or os.environ.get("SEPVIT_CONFIG_FILE")
    token = _CONFIG_FILE.set(Path(path) if path else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)
