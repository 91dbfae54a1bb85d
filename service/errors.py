"""Gateway errors and the one table that maps every error kind to an HTTP status and a gRPC code.

Request-content errors come from :mod:`handlers.errors` and carry an :class:`ErrorKind`; the
gateway adds the kinds of routing, admission, auth and time (:class:`ServiceKind`). A kind's
value is the ``code`` string clients see. :data:`STATUS` is the only place a kind becomes a
status, :func:`describe` the only place an exception does, for REST, gRPC and the TorchServe
entry point alike; the error bodies are the TypedDicts below (the OpenAPI schema is generated
from them).

Only the standard library, ``typing_extensions`` (pydantic reads TypedDicts from it on Python
3.11; torch depends on it too) and :mod:`handlers.errors` are imported here: TorchServe archives
ship this module beside the handlers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from typing_extensions import TypedDict

from handlers.errors import ErrorKind, PipelineError

__all__ = [
    "STATUS",
    "BackendError",
    "BadRequestError",
    "DeadlineExceededError",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "ForbiddenError",
    "ImageError",
    "Kind",
    "ModelNotFoundError",
    "NotReadyError",
    "OIPErrorBody",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "ServiceError",
    "ServiceKind",
    "Status",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "describe",
    "describe_http",
]


class ServiceKind(enum.StrEnum):
    """What went wrong in the gateway (not in a request's content)."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"  # no such route
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    QUEUE_FULL = "queue_full"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    BACKEND_ERROR = "backend_error"
    INTERNAL = "internal"


Kind = ErrorKind | ServiceKind


@dataclass(frozen=True)
class Status:
    http: int
    grpc: str  # a grpc.StatusCode name
    doc: str  # what it means, for the OpenAPI description


STATUS: dict[Kind, Status] = {
    ErrorKind.BAD_REQUEST: Status(400, "INVALID_ARGUMENT", "malformed request"),
    ErrorKind.BAD_PARAMETER: Status(400, "INVALID_ARGUMENT", "parameter out of range"),
    ErrorKind.UNDECODABLE_IMAGE: Status(400, "INVALID_ARGUMENT", "not a decodable image"),
    ServiceKind.UNAUTHORIZED: Status(401, "UNAUTHENTICATED", "missing bearer token"),
    ServiceKind.FORBIDDEN: Status(403, "PERMISSION_DENIED", "invalid token"),
    ServiceKind.MODEL_NOT_FOUND: Status(404, "NOT_FOUND", "unknown model or version"),
    ServiceKind.NOT_FOUND: Status(404, "NOT_FOUND", "no such route"),
    ServiceKind.METHOD_NOT_ALLOWED: Status(405, "UNIMPLEMENTED", "method not allowed"),
    ServiceKind.REQUEST_TIMEOUT: Status(408, "DEADLINE_EXCEEDED", "body arrived too slowly"),
    ServiceKind.PAYLOAD_TOO_LARGE: Status(413, "INVALID_ARGUMENT", "body over the size limit"),
    ErrorKind.IMAGE_TOO_LARGE: Status(413, "INVALID_ARGUMENT", "image over the pixel limit"),
    ErrorKind.TOO_MANY_IMAGES: Status(413, "INVALID_ARGUMENT", "too many images"),
    ServiceKind.UNSUPPORTED_MEDIA_TYPE: Status(415, "INVALID_ARGUMENT", "unsupported body type"),
    ErrorKind.UNSUPPORTED_IMAGE: Status(415, "INVALID_ARGUMENT", "unsupported image format"),
    ServiceKind.QUEUE_FULL: Status(429, "RESOURCE_EXHAUSTED", "queue full (Retry-After)"),
    ServiceKind.INTERNAL: Status(500, "INTERNAL", "internal error"),
    ServiceKind.BACKEND_ERROR: Status(502, "INTERNAL", "the TorchServe backend failed"),
    ServiceKind.OVERLOADED: Status(503, "UNAVAILABLE", "overloaded (Retry-After)"),
    ServiceKind.NOT_READY: Status(503, "UNAVAILABLE", "not ready or draining (Retry-After)"),
    ServiceKind.DEADLINE_EXCEEDED: Status(504, "DEADLINE_EXCEEDED", "deadline exceeded"),
}

# HTTP errors raised by the framework itself (routing, form parsing), by status
_HTTP_KINDS: dict[int, Kind] = {
    400: ErrorKind.BAD_REQUEST,
    404: ServiceKind.NOT_FOUND,
    405: ServiceKind.METHOD_NOT_ALLOWED,
}


class ServiceError(Exception):
    """Base of the gateway's own errors."""

    kind: ClassVar[Kind] = ServiceKind.INTERNAL
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def code(self) -> str:
        return self.kind.value


class BadRequestError(ServiceError):
    kind = ErrorKind.BAD_REQUEST


class UnauthorizedError(ServiceError):
    kind = ServiceKind.UNAUTHORIZED


class ForbiddenError(ServiceError):
    kind = ServiceKind.FORBIDDEN


class ModelNotFoundError(ServiceError):
    kind = ServiceKind.MODEL_NOT_FOUND


class RequestTimeoutError(ServiceError):
    """The request body did not arrive within ``body_timeout_s``."""

    kind = ServiceKind.REQUEST_TIMEOUT


class PayloadTooLargeError(ServiceError):
    kind = ServiceKind.PAYLOAD_TOO_LARGE


class UnsupportedMediaTypeError(ServiceError):
    kind = ServiceKind.UNSUPPORTED_MEDIA_TYPE


class QueueFullError(ServiceError):
    """The model's queue is full: come back shortly."""

    kind = ServiceKind.QUEUE_FULL
    retry_after = 1


class OverloadedError(ServiceError):
    """Too many concurrent requests on this gateway."""

    kind = ServiceKind.OVERLOADED
    retry_after = 1


class NotReadyError(ServiceError):
    """The model (or its backend) is not ready: loading, failed, draining or unreachable."""

    kind = ServiceKind.NOT_READY
    retry_after = 1


class DeadlineExceededError(ServiceError):
    kind = ServiceKind.DEADLINE_EXCEEDED


class BackendError(ServiceError):
    """A remote backend (TorchServe) failed on a request or answered something unreadable."""

    kind = ServiceKind.BACKEND_ERROR


# -- the bodies ----------------------------------------------------------------------------------
class ErrorDetail(TypedDict):
    code: str
    message: str
    request_id: str | None


class ErrorBody(TypedDict):
    """An error on the task routes and the operations routes."""

    error: ErrorDetail


class OIPErrorBody(TypedDict):
    """An error on the Open Inference Protocol routes (``/v2...``): the shape OIP clients
    (tritonclient) parse."""

    error: str
    code: str
    request_id: str | None


class ImageErrorDetail(TypedDict):
    code: str
    message: str


class ImageError(TypedDict):
    """One image's failure, in the place of its result (the other images are answered)."""

    error: ImageErrorDetail


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    grpc_code: str  # a grpc.StatusCode name
    code: str
    message: str
    retry_after: int | None = None

    @staticmethod
    def of(
        kind: Kind, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> ErrorInfo:
        status = STATUS[kind]
        return ErrorInfo(status.http, status.grpc, code or kind.value, message, retry_after)

    def body(self, request_id: str | None) -> ErrorBody:
        return {"error": {"code": self.code, "message": self.message, "request_id": request_id}}

    def oip_body(self, request_id: str | None) -> OIPErrorBody:
        return {"error": self.message, "code": self.code, "request_id": request_id}

    def image_body(self) -> ImageError:
        return {"error": {"code": self.code, "message": self.message}}


def describe(exc: BaseException) -> ErrorInfo:
    """Status, code and message of any exception; unknown ones are internal errors."""
    if isinstance(exc, ServiceError):
        return ErrorInfo.of(exc.kind, exc.message, retry_after=exc.retry_after)
    if isinstance(exc, PipelineError):
        return ErrorInfo.of(exc.kind, exc.message, code=exc.code)
    return ErrorInfo.of(ServiceKind.INTERNAL, "internal server error")


def describe_http(status: int, detail: str) -> ErrorInfo:
    """An HTTP error the framework raised (no route, wrong method, unreadable form)."""
    kind = _HTTP_KINDS.get(status)
    if kind is None:  # a status of the framework's own that no kind names: passed through
        return ErrorInfo(status, "UNKNOWN", "http_error", detail)
    return ErrorInfo.of(kind, detail)
