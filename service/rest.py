"""HTTP routes. Each stays short: parse the transport, call the data plane, shape the answer.
No torch here; errors are raised and mapped once by the app's exception handlers. Answers are
the models of :mod:`service.schemas`, which generate the OpenAPI schema (errors included, from
the one error table). Parsing a large OIP body (JSON, base64) and rendering answers run in a
worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, create_model
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers.params import TASKS, RequestParams

from .admission import decimal
from .dataplane import DataPlane, InferenceRequest, InferenceResponse, encode_result
from .errors import BadRequestError, OIPErrorBody, PayloadTooLargeError, UnsupportedMediaTypeError
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .oip.codec import rest_request, rest_response
from .schemas import (
    TASK_RESPONSES,
    Answer,
    ImageFiles,
    InferRequest,
    InferResponse,
    ModelList,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    Statistics,
    content,
    error_responses,
    request_body,
)

__all__ = ["router"]

T = TypeVar("T")

# bodies above this size are parsed in a worker thread: below it the thread hop costs more than
# the parse, above it a parse could hold the event loop for milliseconds
OFF_LOOP_BYTES = 64 * 1024
# answers with at most this many entries in all (classes, detections) and no mask or PNG are
# rendered on the event loop, for the same reason
ON_LOOP_ENTRIES = 256
RLE_KEYS = frozenset({"mask", "rle"})  # an entry's COCO RLE: detection masks, segments

router = APIRouter()


# dependencies are coroutines: FastAPI runs a plain ``def`` dependency in its thread pool, a
# thread hop per request
async def get_plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


PlaneDep = Annotated[DataPlane, Depends(get_plane)]
ModelName = Annotated[str, Path(max_length=64, description="model name (see GET /models)")]


class _ModelQuery(BaseModel):
    model: str | None = Field(
        default=None, max_length=64, description="model name; default: the first of this task"
    )


def _task_query() -> type[_ModelQuery]:
    """The task routes' query parameters: ``model`` and every request parameter, with the type,
    range and help :class:`~handlers.params.RequestParams` gives it."""
    types = get_type_hints(RequestParams)
    params: dict[str, Any] = {
        f.name: (
            types[f.name],
            Field(
                default=None,
                ge=f.metadata["low"],
                le=f.metadata["high"],
                description=f.metadata["help"],
            ),
        )
        for f in dataclasses.fields(RequestParams)
    }
    return create_model("TaskQuery", __base__=_ModelQuery, **params)


if TYPE_CHECKING:
    TaskQuery = _ModelQuery
else:
    TaskQuery = _task_query()

# the error answers by how far a request gets: every route (auth, the Content-Length limit, a
# bug); through admission (overloaded, draining); naming a model; sending images to infer on
ANY = (401, 403, 413, 500)
ADMITTED = (*ANY, 503)
MODEL = (*ADMITTED, 400, 404)
INFER = (*MODEL, 408, 415, 429, 502, 504)
IMAGE_BODY = request_body(content("multipart/form-data", ImageFiles), content("image/*", bytes))
INFER_BODY = request_body(
    content("application/json", InferRequest), content("application/octet-stream", bytes)
)


def _timeout(request: Request) -> float | None:
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequestError("X-Request-Timeout must be a number of seconds") from None
    if not 0 < value < 1e6:
        raise BadRequestError("X-Request-Timeout must be positive")
    return value


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | Response:
    """Await ``work``; if the client goes away first, cancel it (its images leave the queue)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled (the drain's cut-off): so is its work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return Response(status_code=499)  # nobody reads it: the client is gone


async def read_images(request: Request, plane: DataPlane) -> list[bytes]:
    """Multipart ``file`` parts (in order) or one raw ``image/*`` body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = plane.settings.max_images_per_request
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=limit + 1, max_fields=16)
        except StarletteHTTPException as exc:
            if "too many files" in str(exc.detail).lower():  # the image-count limit: 413
                raise PayloadTooLargeError(f"more than {limit} images in one request") from None
            raise BadRequestError(f"invalid multipart body: {exc.detail}") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if len(files) > limit:
                raise PayloadTooLargeError(f"more than {limit} images in one request")
            return [await f.read() for f in files]
        finally:
            await form.close()
    if media.startswith("image/") or media == "application/octet-stream":
        return [await request.body()]
    raise UnsupportedMediaTypeError(
        f"send images as multipart/form-data 'file' parts or one image/* body, not {media!r}"
    )


async def task_response(resp: InferenceResponse) -> Response:
    """One image with a PNG answer: the PNG itself; otherwise the task's JSON answer, the shape
    :data:`~service.schemas.TASK_RESPONSES` documents. It is written straight from the results
    (validating big detection and mask lists per request would cost more than writing them; the
    schemathesis test checks real answers against the schema instead)."""
    if len(resp.results) == 1:
        item = resp.results[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item.get("data"), bytes | bytearray):
            return Response(item["data"], media_type=item["media_type"])

    def render() -> bytes:  # RLE masks and base64 PNGs can be megabytes of JSON
        doc = {
            "model": resp.model,
            "task": resp.task,
            "results": [encode_result(r) for r in resp.results],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    body = render() if small(resp) else await asyncio.to_thread(render)
    return Response(body, media_type="application/json")


def small(resp: InferenceResponse) -> bool:
    """Whether rendering ``resp`` is cheaper than a thread hop: only a few short entries (top-k
    classes, detections without masks), no RLE mask and no PNG, whose sizes are unbounded."""
    entries = 0
    for item in resp.results:
        if isinstance(item, Exception):
            continue
        for value in item.values():
            if isinstance(value, bytes | bytearray):
                return False
            if isinstance(value, list):
                if value and isinstance(value[0], dict) and not RLE_KEYS.isdisjoint(value[0]):
                    return False
                entries += len(value)
    return entries <= ON_LOOP_ENTRIES


def _task_endpoint(task: str) -> Any:
    async def endpoint(
        request: Request,
        plane: PlaneDep,
        query: Annotated[TaskQuery, Query()],
    ) -> Response:
        images = await read_images(request, plane)
        req = InferenceRequest(
            images=images,
            model=query.model,
            task=task,
            params=query.model_dump(exclude_none=True, exclude={"model"}),
            timeout_s=_timeout(request),
            request_id=request.state.request_id,
        )
        resp = await until_disconnect(request, plane.infer(req))
        if isinstance(resp, Response):
            return resp
        return await task_response(resp)

    endpoint.__name__ = task
    return endpoint


TASK_DOCS = {
    "classify": "Top-k classes per image: `results[i].top_k = [{label, index, score}]`.",
    "detect": "Boxes per image in original pixels: `results[i].detections = "
    "[{label, index, score, box: [x1, y1, x2, y2]}]`; a Mask R-CNN model adds `mask` (COCO "
    "RLE) per detection, or with one image and `format=png|overlay` answers an instance-id map "
    "/ instance overlay PNG.",
    "segment": "Per-class COCO RLE masks (`results[i].segments`), or with one image and "
    "`format=png|overlay` a PNG label map / colour overlay.",
}
for _task in TASKS:
    router.add_api_route(
        f"/{_task}",
        _task_endpoint(_task),
        methods=["POST"],
        tags=["tasks"],
        summary=f"{_task} one or more images",
        description=TASK_DOCS[_task],
        response_model=TASK_RESPONSES[_task],
        responses={200: {"content": content("image/png", bytes)}, **error_responses(*INFER)},
        openapi_extra=IMAGE_BODY,
    )


# -- operations --------------------------------------------------------------------------------
@router.get("/models", tags=["operations"], responses=error_responses(*ADMITTED))
async def list_models(plane: PlaneDep) -> ModelList:
    """Configured models: task, labels, runtime, batching, state."""
    return ModelList.model_validate({"models": plane.models(), "ready": plane.ready()})


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": content("text/plain", str)}, **error_responses(*ANY)},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(get_metrics(request).render(), media_type=CONTENT_TYPE_LATEST)


# -- Open Inference Protocol v2 -----------------------------------------------------------------
def oip_errors(*statuses: int, unready: type[Answer] | None = None) -> dict[int | str, Any]:
    """The /v2 error answers; ``unready``: the probe's own 503 answer (``{"ready": false}``)."""
    out = error_responses(*statuses, oip=True)
    if unready is not None:
        error = out.get(503)
        desc = "not ready: the probe's answer, false"
        out[503] = {
            "model": unready | OIPErrorBody if error else unready,
            "description": f"{desc}; or the error {error['description']}" if error else desc,
        }
    return out


def _probe(response: Response, ok: bool) -> None:
    if not ok:
        response.status_code = 503


@router.get("/v2", tags=["v2"], responses=oip_errors(*ADMITTED))
async def server_metadata(plane: PlaneDep) -> ServerMetadata:
    return ServerMetadata.model_validate(plane.server_metadata())


@router.get("/v2/health/live", tags=["v2"], responses=oip_errors(413, 500, unready=ServerLive))
async def server_live(plane: PlaneDep, response: Response) -> ServerLive:
    """200 while the event loop turns; 503 once it has stalled (service/watchdog.py)."""
    live = plane.live()
    _probe(response, live)
    return ServerLive(live=live)


@router.get("/v2/health/ready", tags=["v2"], responses=oip_errors(*ANY, unready=ServerReady))
async def server_ready(plane: PlaneDep, response: Response) -> ServerReady:
    ready = plane.ready()
    _probe(response, ready)
    return ServerReady(ready=ready)


# before /v2/models/{model_name}, which would take "stats" for a model name
@router.get("/v2/models/stats", tags=["v2"], responses=oip_errors(*ADMITTED))
async def all_statistics(plane: PlaneDep) -> Statistics:
    """Triton's statistics extension for every model (see the per-model route)."""
    return Statistics.model_validate(plane.statistics())


MODEL_ERRORS = oip_errors(*MODEL)


@router.get("/v2/models/{model_name}/stats", tags=["v2"], responses=MODEL_ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats", tags=["v2"], responses=MODEL_ERRORS
)
async def model_statistics(
    plane: PlaneDep, model_name: ModelName, model_version: str | None = None
) -> Statistics:
    """Triton's statistics extension: success/fail counts, cumulative queue and compute times
    (ns), execution and inference counts, and per-batch-size figures."""
    return Statistics.model_validate(plane.statistics(model_name, model_version))


@router.get("/v2/models/{model_name}", tags=["v2"], responses=MODEL_ERRORS)
@router.get("/v2/models/{model_name}/versions/{model_version}", tags=["v2"], responses=MODEL_ERRORS)
async def model_metadata(
    plane: PlaneDep, model_name: ModelName, model_version: str | None = None
) -> ModelMetadata:
    return ModelMetadata.model_validate(plane.model_metadata(model_name, model_version))


READY_ERRORS = oip_errors(*MODEL, unready=ModelReady)


@router.get("/v2/models/{model_name}/ready", tags=["v2"], responses=READY_ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready", tags=["v2"], responses=READY_ERRORS
)
async def model_ready(
    plane: PlaneDep, response: Response, model_name: ModelName, model_version: str | None = None
) -> ModelReady:
    ready = plane.model_ready(model_name, model_version)
    _probe(response, ready)
    return ModelReady(name=model_name, ready=ready)


INFER_ANSWERS = {
    200: {"content": content("application/octet-stream", bytes)},
    **oip_errors(*INFER),
}


INFER_ROUTE: dict[str, Any] = dict(
    tags=["v2"], response_model=InferResponse, responses=INFER_ANSWERS, openapi_extra=INFER_BODY
)


@router.post("/v2/models/{model_name}/infer", **INFER_ROUTE)
@router.post("/v2/models/{model_name}/versions/{model_version}/infer", **INFER_ROUTE)
async def model_infer(
    request: Request, plane: PlaneDep, model_name: ModelName, model_version: str | None = None
) -> Response:
    """A BYTES input of N encoded images; the BYTES output ``RESULT`` holds N JSON answers.
    Accepts JSON (base64 data) and the binary-data extension (``application/octet-stream``:
    the JSON header, ``Inference-Header-Content-Length`` bytes long, then the raw tensors)."""
    plane.model(model_name, model_version)
    body = await request.body()
    raw_len = request.headers.get("inference-header-content-length")
    header_len = decimal(raw_len) if raw_len is not None else None
    if raw_len is not None and header_len is None:
        raise BadRequestError("Inference-Header-Content-Length must be a decimal integer")
    args = (model_name, body, header_len, _timeout(request), plane.settings.max_images_per_request)
    if len(body) > OFF_LOOP_BYTES:
        req, binary, oip_id = await asyncio.to_thread(rest_request, *args)
    else:
        req, binary, oip_id = rest_request(*args)
    req.request_id = request.state.request_id
    resp = await until_disconnect(request, plane.infer(req))
    if isinstance(resp, Response):
        return resp
    if small(resp):
        content_, out_len = rest_response(resp, binary, oip_id)
    else:
        content_, out_len = await asyncio.to_thread(rest_response, resp, binary, oip_id)
    if out_len is None:
        return Response(content_, media_type="application/json")
    return Response(
        content_,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(out_len)},
    )
