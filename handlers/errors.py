"""Typed pipeline errors. Each carries an HTTP status and a gRPC code, mapped once here, so the
gateway, the gRPC server and the TorchServe entry points report a failure the same way."""

from __future__ import annotations

__all__ = [
    "BadParameterError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PipelineError",
    "TooManyImagesError",
    "UnsupportedImageError",
]


class PipelineError(Exception):
    """Base of every error caused by a request's content (never by the server)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageDecodeError(PipelineError):
    """The bytes are not a decodable image (corrupt, truncated, empty, or not an image)."""

    code = "undecodable_image"


class UnsupportedImageError(PipelineError):
    """A real image in a format or mode that is not accepted."""

    http_status = 415
    code = "unsupported_image"


class ImageTooLargeError(PipelineError):
    """The body or the decoded pixel count exceeds the configured limit."""

    http_status = 413
    grpc_code = "INVALID_ARGUMENT"
    code = "image_too_large"


class TooManyImagesError(PipelineError):
    """More images in one request than the configured maximum."""

    http_status = 413
    code = "too_many_images"


class BadParameterError(PipelineError):
    """A request parameter (top_k, score_threshold, format, ...) is out of range."""

    code = "bad_parameter"
