"""Gateway settings: pure data, one pydantic-settings class and the model entries in it.

Nothing here reads a file. :mod:`service.loader` builds :class:`Settings` from keyword arguments
(the CLI), environment variables (``SEPVIT_`` prefix, nested with ``__``), an optional YAML file,
then the defaults here, strongest first; it also reads the model list file and each model's
``model-config.yaml`` (:class:`ModelConfigFile`). Every field's default and description is
defined once, here: the CLI help is generated from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from handlers.decode import DECODE_BYTES_PER_PIXEL
from handlers.params import RuntimeName, Task

__all__ = [
    "DEMO_MODELS",
    "MemoryBudget",
    "ModelConfigFile",
    "ModelSpec",
    "Settings",
]

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

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class ModelSpec(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    checkpoint: Path
    task: Task | None = None  # None: from the checkpoint
    runtime: RuntimeName | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=256)
    max_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    adaptive_batching: bool | None = None  # None: the server's adaptive_batching
    max_queue: int | None = Field(default=None, ge=1)  # images waiting, beyond the running batch
    handler: dict[str, Any] = Field(default_factory=dict)  # handlers.PipelineConfig options
    model_config_file: Path | None = None  # default: model-config.yaml beside the checkpoint


class ModelConfigFile(BaseModel):
    """What the gateway reads from a model's TorchServe-style ``model-config.yaml``: the batch
    settings (which fill in what the model entry leaves unset) and the handler options. The
    other keys are TorchServe's own."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    batch_size: int | None = Field(default=None, ge=1, le=256, alias="batchSize")
    max_batch_delay_ms: float | None = Field(default=None, ge=0, le=10_000, alias="maxBatchDelay")
    handler: dict[str, Any] = Field(default_factory=dict)

    @field_validator("handler", mode="before")
    @classmethod
    def _handler(cls, v: Any) -> Any:
        return {} if v is None else v  # an empty ``handler:`` section


def _demo(name: str, task: str) -> ModelSpec:
    return ModelSpec(name=name, task=task, checkpoint=Path(f"model_store/{name}/model.safetensors"))  # type: ignore[arg-type]


DEMO_MODELS = [
    _demo("sepvit_lite_shapes_cls", "classify"),
    _demo("sepvit_lite_shapes_det", "detect"),
    _demo("sepvit_lite_shapes_seg", "segment"),
]


class Settings(BaseSettings):
    """Everything the gateway reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="SEPVIT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    # network
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port")
    grpc_port: int | None = Field(
        default=8001, ge=0, le=65535, description="gRPC port, or null for none"
    )
    workers: int = Field(default=1, ge=1, le=64, description="worker processes")
    # models and backend
    backend: Literal["embedded", "torchserve"] = Field(
        default="embedded",
        description="embedded (in-process pipelines) or torchserve (forward to TorchServe)",
    )
    models: list[ModelSpec] = Field(default_factory=lambda: [m.model_copy() for m in DEMO_MODELS])
    models_file: Path | None = Field(
        default=None,
        description="YAML model list (name, checkpoint, task, runtime, batching)",
    )
    require_all_models: bool = True  # server readiness needs every model, else any one
    torch_threads: int = Field(
        default=1, ge=0, description="intra-op threads per worker (0: torch's default)"
    )
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
    log_level: LogLevel = Field(default="info", description="log level")
    log_json: bool = True
    # torchserve backend: TorchServe's gRPC inference address, its inference key (or the file
    # holding it: TorchServe's key_file.json, re-read when it changes), per-call timeout, health
    # check period, and gateway model name -> TorchServe model name (default: the same name)
    torchserve_address: str = Field(
        default="127.0.0.1:7070", description="TorchServe gRPC inference address"
    )
    torchserve_token: SecretStr | None = None
    torchserve_token_file: Path | None = Field(
        default=None, description="TorchServe's key_file.json (or a file holding its inference key)"
    )
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
        """Keyword arguments, then the environment (files: :mod:`service.loader`)."""
        return (init_settings, env_settings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _models(self) -> Settings:
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


class MemoryBudget(BaseModel):
    baseline: int
    bodies: int
    images: int

    @property
    def total(self) -> int:
        return self.baseline + self.bodies + self.images
