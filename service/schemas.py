"""The HTTP answers (and request bodies) as pydantic models: the routes return them and FastAPI
generates the OpenAPI schema from them, errors included; ``tests/service/test_servers.py`` checks
real answers against that schema with schemathesis.

Answers are strict (``extra="forbid"``): a field the schema does not name is a bug there.
Request bodies the routes parse themselves (images, OIP tensors) are documented by models too,
through :func:`request_body` and :func:`openapi`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from handlers.params import Task

from .backends.base import ModelState
from .errors import STATUS, ErrorBody, ImageError, OIPErrorBody

__all__ = [
    "ClassifyResponse",
    "DetectResponse",
    "InferRequest",
    "InferResponse",
    "ModelList",
    "ModelMetadata",
    "ModelReady",
    "SegmentResponse",
    "ServerLive",
    "ServerMetadata",
    "ServerReady",
    "Statistics",
    "content",
    "error_responses",
    "openapi",
    "request_body",
]

REF = "#/components/schemas/{model}"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- task routes ---------------------------------------------------------------------------------
class RLE(Answer):
    """COCO compressed RLE of a mask at the original image size."""

    size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str


class Prediction(Answer):
    label: str
    index: int
    score: float


class Detection(Prediction):
    box: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in original pixels"
    )
    mask: RLE | None = Field(default=None, description="Mask R-CNN models: the instance's mask")


class Segment(Answer):
    label: str
    index: int
    area: int = Field(description="pixels of this class")
    rle: RLE


class ClassifyResult(Answer):
    top_k: list[Prediction]


class DetectResult(Answer):
    detections: list[Detection]


class SegmentResult(Answer):
    segments: list[Segment]


class EncodedImage(Answer):
    """A PNG answer (``format=png|overlay``) inside a JSON answer of several images."""

    media_type: Literal["image/png"]
    data_base64: str


class TaskResponse(Answer):
    model: str
    task: Task


class ClassifyResponse(TaskResponse):
    results: list[ClassifyResult | ImageError]


class DetectResponse(TaskResponse):
    results: list[DetectResult | EncodedImage | ImageError]


class SegmentResponse(TaskResponse):
    results: list[SegmentResult | EncodedImage | ImageError]


TASK_RESPONSES: dict[Task, type[TaskResponse]] = {
    "classify": ClassifyResponse,
    "detect": DetectResponse,
    "segment": SegmentResponse,
}


class ImageFiles(BaseModel):
    file: list[bytes] = Field(description="one part per image, in order")


# -- operations ----------------------------------------------------------------------------------
class ModelEntry(Answer):
    name: str
    task: str | None
    state: ModelState
    ready: bool
    labels: list[str] | None
    runtime: str | None
    runtime_info: dict[str, Any] | None = Field(
        description="the runtime asked for and the one serving (auto's choice, fallbacks)"
    )
    input_size: list[int] | None
    batching: dict[str, Any]
    error: str | None


class ModelList(Answer):
    models: list[ModelEntry]
    ready: bool


# -- Open Inference Protocol v2 ------------------------------------------------------------------
class ServerLive(Answer):
    live: bool


class ServerReady(Answer):
    ready: bool


class ModelReady(Answer):
    name: str
    ready: bool


class ServerMetadata(Answer):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(Answer):
    name: str
    datatype: str
    shape: list[int]


class ModelParameters(Answer):
    task: str | None
    labels: list[str] | None


class ModelMetadata(Answer):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


class Duration(Answer):
    count: int
    ns: int


class InferStats(Answer):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class BatchStats(Answer):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(Answer):
    name: str
    version: str
    last_inference: int = Field(description="ms since the epoch")
    inference_count: int
    execution_count: int
    inference_stats: InferStats
    batch_stats: list[BatchStats]


class Statistics(Answer):
    model_stats: list[ModelStatistics]


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["BYTES"]
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the input follows the JSON header as raw bytes"
    )
    data: list[Any] | None = Field(
        default=None, description="base64 strings (nested lists allowed)"
    )


class RequestedOutput(BaseModel):
    name: Literal["RESULT"]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="top_k, score_threshold, max_detections, format, timeout (us), "
        "binary_data_output",
    )
    inputs: list[InferInput] = Field(description="one BYTES tensor of encoded images")
    outputs: list[RequestedOutput] | None = None


class BinaryData(Answer):
    binary_data_size: int


class OutputTensor(Answer):
    name: str
    datatype: str
    shape: list[int]
    data: list[str] | None = Field(default=None, description="per image, its answer as JSON text")
    parameters: BinaryData | None = None


class InferResponse(Answer):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


# -- how they enter the schema -------------------------------------------------------------------
def error_responses(*statuses: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, from the one table: each status with the kinds that give
    it, and the body shape of the route's family."""
    body = OIPErrorBody if oip else ErrorBody
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        kinds = [f"`{k}` ({s.doc})" for k, s in STATUS.items() if s.http == status]
        out[status] = {"model": body, "description": ", ".join(kinds)}
    return out


def content(media_type: str, kind: Any) -> dict[str, Any]:
    """A ``content`` entry: ``media_type`` holding ``kind`` (a model, ``bytes``, ``str``).
    Nested models land in the schema's components (:func:`openapi`)."""
    return {media_type: {"schema": TypeAdapter(kind).json_schema(ref_template=REF)}}


def request_body(*contents: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a body the route reads itself (it parses and bounds it)."""
    return {
        "requestBody": {"required": True, "content": {k: v for c in contents for k, v in c.items()}}
    }


BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of the gateway's tokens (auth_tokens / auth_token_file); without any "
    "configured tokens every route is open.",
}


def openapi(
    app: FastAPI, auth: bool = False, needs_token: Callable[[str], bool] = lambda path: True
) -> dict[str, Any]:
    """The app's OpenAPI document: FastAPI's, with the request bodies' nested models moved to
    the components, and without the 422 answers FastAPI assumes (this app answers 400).

    It declares the bearer scheme; with ``auth`` on, it requires it of the paths that
    ``needs_token``, which the docs page's *Authorize* button then sends."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for item in doc["paths"].values():
            for op in item.values():
                op["responses"].pop("422", None)
                bodies = [op.get("requestBody", {}), *op["responses"].values()]
                for media in (m for b in bodies for m in b.get("content", {}).values()):
                    components.update(media.get("schema", {}).pop("$defs", {}))
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        doc["components"]["securitySchemes"] = {"bearer": BEARER}
        if auth:
            doc["security"] = [{"bearer": []}]
            for path, item in doc["paths"].items():
                if not needs_token(path):
                    for op in item.values():
                        op["security"] = []
        app.openapi_schema = doc
    return app.openapi_schema
