"""Gateway errors and the one table that maps every error to an HTTP status and a gRPC code.

Request-content errors come from :mod:`handlers.errors` (they carry their own status and code);
the gateway adds the errors of routing, admission, auth and time. :func:`describe` is the only
place where an exception becomes a status, for REST and gRPC alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.errors import PipelineError

__all__ = [
    "BackendError",
    "BadRequestError",
    "DeadlineExceededError",
    "ErrorInfo",
    "ForbiddenError",
    "ModelNotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "ServiceError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "describe",
]


class ServiceError(Exception):
    """Base of the gateway's own errors."""

    http_status = 500
    grpc_code = "INTERNAL"
    code = "internal"
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequestError(ServiceError):
    http_status, grpc_code, code = 400, "INVALID_ARGUMENT", "bad_request"


class UnauthorizedError(ServiceError):
    http_status, grpc_code, code = 401, "UNAUTHENTICATED", "unauthorized"


class ForbiddenError(ServiceError):
    http_status, grpc_code, code = 403, "PERMISSION_DENIED", "forbidden"


class ModelNotFoundError(ServiceError):
    http_status, grpc_code, code = 404, "NOT_FOUND", "model_not_found"


class RequestTimeoutError(ServiceError):
    """The request body did not arrive within ``body_timeout_s``."""

    http_status, grpc_code, code = 408, "DEADLINE_EXCEEDED", "request_timeout"


class PayloadTooLargeError(ServiceError):
    http_status, grpc_code, code = 413, "INVALID_ARGUMENT", "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    http_status, grpc_code, code = 415, "INVALID_ARGUMENT", "unsupported_media_type"


class QueueFullError(ServiceError):
    """The model's queue is full: come back shortly."""

    http_status, grpc_code, code = 429, "RESOURCE_EXHAUSTED", "queue_full"
    retry_after = 1


class OverloadedError(ServiceError):
    """Too many concurrent requests on this gateway."""

    http_status, grpc_code, code = 503, "UNAVAILABLE", "overloaded"
    retry_after = 1


class NotReadyError(ServiceError):
    """The model (or its backend) is not ready: loading, failed, draining or unreachable."""

    http_status, grpc_code, code = 503, "UNAVAILABLE", "not_ready"
    retry_after = 1


class DeadlineExceededError(ServiceError):
    http_status, grpc_code, code = 504, "DEADLINE_EXCEEDED", "deadline_exceeded"


class BackendError(ServiceError):
    """A remote backend (TorchServe) failed on a request or answered something unreadable."""

    http_status, grpc_code, code = 502, "INTERNAL", "backend_error"


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    grpc_code: str  # a grpc.StatusCode name
    code: str
    message: str
    retry_after: int | None = None

    def body(self, request_id: str | None, *, oip: bool = False) -> dict[str, Any]:
        """``{"error": {code, message, request_id}}``; on the Open Inference Protocol routes
        ``{"error": message, "code", "request_id"}``, the shape OIP clients parse."""
        if oip:
            return {"error": self.message, "code": self.code, "request_id": request_id}
        return {"error": {"code": self.code, "message": self.message, "request_id": request_id}}


def describe(exc: BaseException) -> ErrorInfo:
    """Status, code and message of any exception; unknown ones are internal errors."""
    if isinstance(exc, ServiceError):
        return ErrorInfo(exc.http_status, exc.grpc_code, exc.code, exc.message, exc.retry_after)
    if isinstance(exc, PipelineError):
        return ErrorInfo(exc.http_status, exc.grpc_code, exc.code, exc.message)
    return ErrorInfo(500, "INTERNAL", "internal", "internal server error")
