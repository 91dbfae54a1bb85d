"""Typed pipeline errors. Each carries a transport-free :class:`ErrorKind`; what a kind means on
the wire (HTTP status, gRPC code) is decided once, in :mod:`service.errors`, so the gateway, the
gRPC server and the TorchServe entry point report a failure the same way."""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "DECODE_KINDS",
    "BadParameterError",
    "ErrorKind",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PipelineError",
    "TooManyImagesError",
    "UnsupportedImageError",
]


class ErrorKind(enum.StrEnum):
    """What was wrong with a request's content. The value is the error ``code`` clients see."""

    BAD_REQUEST = "bad_request"
    BAD_PARAMETER = "bad_parameter"
    UNDECODABLE_IMAGE = "undecodable_image"
    UNSUPPORTED_IMAGE = "unsupported_image"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_IMAGES = "too_many_images"


# the kinds an image's decoding reports (counted by ``sepvit_decode_errors_total``)
DECODE_KINDS = frozenset(
    {ErrorKind.UNDECODABLE_IMAGE, ErrorKind.UNSUPPORTED_IMAGE, ErrorKind.IMAGE_TOO_LARGE}
)


class PipelineError(Exception):
    """Base of every error caused by a request's content (never by the server).

    ``code`` is the kind's value, except for an error rebuilt from a code this version does not
    know (:meth:`from_code`): it keeps that code, with the base kind."""

    kind: ClassVar[ErrorKind] = ErrorKind.BAD_REQUEST
    _by_kind: ClassVar[dict[ErrorKind, type[PipelineError]]] = {}

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.kind.value

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        PipelineError._by_kind.setdefault(cls.kind, cls)

    @staticmethod
    def from_code(code: str, message: str) -> PipelineError:
        """The error of the kind named ``code`` (as an error body carries it, e.g. TorchServe's
        answer); an unknown code gives a base :class:`PipelineError` that keeps it."""
        try:
            kind = ErrorKind(code)
        except ValueError:
            return PipelineError(message, code=code)
        return PipelineError._by_kind.get(kind, PipelineError)(message)


class ImageDecodeError(PipelineError):
    """The bytes are not a decodable image (corrupt, truncated, empty, or not an image)."""

    kind = ErrorKind.UNDECODABLE_IMAGE


class UnsupportedImageError(PipelineError):
    """A real image in a format or mode that is not accepted."""

    kind = ErrorKind.UNSUPPORTED_IMAGE


class ImageTooLargeError(PipelineError):
    """The body or the decoded pixel count exceeds the configured limit."""

    kind = ErrorKind.IMAGE_TOO_LARGE


class TooManyImagesError(PipelineError):
    """More images in one request than the configured maximum."""

    kind = ErrorKind.TOO_MANY_IMAGES


class BadParameterError(PipelineError):
    """A request parameter (top_k, score_threshold, format, ...) is out of range."""

    kind = ErrorKind.BAD_PARAMETER
