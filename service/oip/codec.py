"""Open Inference Protocol v2 tensors <-> the data plane's request and response.

The model input is one ``BYTES`` tensor of shape ``[N]``: N encoded images. The output
``RESULT`` is a ``BYTES`` tensor of shape ``[N]``: each element is that image's answer as JSON
(the same document the task routes return per image, or ``{"error": ...}``).

Wire forms handled here:

* REST JSON: ``data`` is a (possibly nested) list of base64 strings (JSON cannot carry raw
  bytes);
* REST binary-data extension: the JSON header is followed by raw tensor bytes
  (``Inference-Header-Content-Length`` gives the header's length; each binary input states its
  ``binary_data_size``);
* gRPC: ``raw_input_contents`` or ``contents.bytes_contents``.

A raw ``BYTES`` tensor holds each element as a 4-byte little-endian length and the bytes.

Every count is bounded before any work depends on it: a shape has at most ``MAX_TENSOR_RANK``
dimensions and at most ``max_elements`` (the image limit) elements, checked dimension by
dimension before multiplying; tensor data stops being read one element past the limit.
Over the limit is 413 ``too_many_images``; anything malformed is 400.

The request parameter ``timeout`` (microseconds, as Triton and tritonclient's ``timeout=`` send
it) shortens the request's deadline on both transports; it is the only per-request deadline a
request on a gRPC stream can carry.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from handlers.errors import TooManyImagesError
from handlers.params import PARAM_KEYS

from ..dataplane import OUTPUT_NAME, InferenceRequest, InferenceResponse, encode_result
from ..errors import BadRequestError
from ..schemas import BinaryData, InferResponse, OutputTensor
from ..settings import MAX_TENSOR_RANK
from . import grpc_service_pb2 as pb

__all__ = [
    "decode_bytes_tensor",
    "encode_bytes_tensor",
    "grpc_request",
    "grpc_response",
    "rest_request",
    "rest_response",
]


def encode_bytes_tensor(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _too_many(limit: int) -> TooManyImagesError:
    return TooManyImagesError(f"more than {limit} images in one request")


def decode_bytes_tensor(raw: bytes, max_elements: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    pos, n = 0, len(raw)
    while pos < n:
        if max_elements is not None and len(out) >= max_elements:
            raise _too_many(max_elements)
        if pos + 4 > n:
            raise BadRequestError("BYTES tensor data is truncated (length prefix)")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > n:
            raise BadRequestError("BYTES tensor data is truncated (element)")
        out.append(bytes(raw[pos : pos + size]))
        pos += size
    return out


def _count(shape: Sequence[Any], max_elements: int) -> int:
    """The element count of a shape, refused before any arithmetic that could grow with it."""
    if isinstance(shape, str | bytes | dict) or not hasattr(shape, "__len__"):
        raise BadRequestError("invalid tensor shape: expected a list of integers")
    if len(shape) > MAX_TENSOR_RANK:
        raise BadRequestError(
            f"tensor shape has {len(shape)} dimensions; at most {MAX_TENSOR_RANK}"
        )
    # integers only: a string ("12") or floats ([1.5]) would otherwise pass int()
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequestError(f"invalid tensor shape {list(shape)!r}")
    if any(d < 0 for d in shape):
        raise BadRequestError("invalid tensor shape: negative dimension")
    count = 1
    for d in shape:  # each factor is <= the limit, so the product never grows past limit^2
        if d > max_elements:
            raise _too_many(max_elements)
        count *= d
        if count > max_elements:
            raise _too_many(max_elements)
    return count


_END = object()


def _flatten(data: Any, max_leaves: int | None = None) -> list[Any]:
    """Leaves of nested lists, in order; iterative, so deep nesting cannot overflow the stack.
    More than ``max_leaves`` leaves is 413."""
    out: list[Any] = []
    stack = [iter([data])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            if max_leaves is not None and len(out) >= max_leaves:
                raise _too_many(max_leaves)
            out.append(item)
    return out


def _params(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (raw or {}).items() if k in PARAM_KEYS}


def _deadline(raw: Mapping[str, Any], timeout_s: float | None) -> float | None:
    """The transport's timeout, shortened by a ``timeout`` parameter (microseconds)."""
    micros = raw.get("timeout")
    if micros is None:
        return timeout_s
    if isinstance(micros, bool) or not isinstance(micros, int) or micros <= 0:
        raise BadRequestError("the timeout parameter must be a positive number of microseconds")
    return micros / 1e6 if timeout_s is None else min(timeout_s, micros / 1e6)


def _image_input(inputs: Any) -> Any:
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequestError("expected exactly one input: a BYTES tensor of encoded images")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise BadRequestError("an input must be a JSON object")
    if tensor.get("datatype") != "BYTES":
        raise BadRequestError(f"input datatype must be BYTES, got {tensor.get('datatype')!r}")
    return tensor


def rest_request(
    model: str,
    body: bytes,
    header_length: int | None,
    timeout_s: float | None,
    max_elements: int,
) -> tuple[InferenceRequest, bool, str | None]:
    """Parse a REST infer body. Returns the request, whether the output goes binary, and the
    request ``id`` to echo. Linear in the body; large bodies are parsed off the event loop."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequestError("Inference-Header-Content-Length is out of range")
        head, binary = body[:header_length], body[header_length:]
    else:
        head, binary = body, b""
    try:
        doc = json.loads(head)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int of 4300+ digits
        raise BadRequestError(f"request is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise BadRequestError("request JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequestError("request must be a JSON object")
    tensor = _image_input(doc.get("inputs"))
    n = _count(tensor.get("shape", []), max_elements)
    tparams = tensor.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise BadRequestError("input parameters must be an object")
    if "binary_data_size" in tparams:
        size = tparams["binary_data_size"]
        if not isinstance(size, int) or not 0 <= size <= len(binary):
            raise BadRequestError("binary_data_size does not match the binary data")
        images = decode_bytes_tensor(binary[:size], max_elements)
    else:
        data = tensor.get("data")
        if data is None:
            raise BadRequestError("input has neither data nor binary_data_size")
        images = []
        for item in _flatten(data, max_elements):
            if not isinstance(item, str):
                raise BadRequestError("BYTES data in JSON must be base64 strings")
            try:
                images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise BadRequestError("BYTES data in JSON must be base64 strings") from exc
    if len(images) != n:
        raise BadRequestError(f"input shape says {n} elements, the data holds {len(images)}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequestError("request parameters must be an object")
    binary_out = bool(params.get("binary_data_output", False))
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequestError("outputs must be a list")
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != OUTPUT_NAME:
            raise BadRequestError(f"the only output is {OUTPUT_NAME!r}")
        oparams = out.get("parameters") or {}
        if isinstance(oparams, dict) and "binary_data" in oparams:
            binary_out = bool(oparams["binary_data"])
    rid = doc.get("id")
    req = InferenceRequest(
        images=images,
        model=model,
        params=_params(params),
        timeout_s=_deadline(params, timeout_s),
    )
    return req, binary_out, rid if isinstance(rid, str) else None


def _result_elements(resp: InferenceResponse) -> list[bytes]:
    return [json.dumps(encode_result(r), separators=(",", ":")).encode() for r in resp.results]


def rest_response(
    resp: InferenceResponse, binary: bool, request_id: str | None
) -> tuple[bytes, int | None]:
    """The REST infer body (:class:`~service.schemas.InferResponse`), and the JSON header's
    length when binary data follows it."""
    elements = _result_elements(resp)
    out = OutputTensor(name=OUTPUT_NAME, datatype="BYTES", shape=[len(elements)])
    doc = InferResponse(model_name=resp.model, model_version="1", outputs=[out])
    if request_id is not None:
        doc.id = request_id
    if not binary:
        out.data = [e.decode() for e in elements]
        return doc.model_dump_json(exclude_unset=True).encode(), None
    raw = encode_bytes_tensor(elements)
    out.parameters = BinaryData(binary_data_size=len(raw))
    head = doc.model_dump_json(exclude_unset=True).encode()
    return head + raw, len(head)


def _param_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def grpc_request(
    req: pb.ModelInferRequest, timeout_s: float | None, max_elements: int
) -> InferenceRequest:
    if len(req.inputs) != 1:
        raise BadRequestError("expected exactly one input: a BYTES tensor of encoded images")
    tensor = req.inputs[0]
    if tensor.datatype != "BYTES":
        raise BadRequestError(f"input datatype must be BYTES, got {tensor.datatype!r}")
    n = _count(tensor.shape, max_elements)
    if req.raw_input_contents:
        if len(req.raw_input_contents) != 1:
            raise BadRequestError("one raw_input_contents entry per input is expected")
        images = decode_bytes_tensor(req.raw_input_contents[0], max_elements)
    else:
        if len(tensor.contents.bytes_contents) > max_elements:
            raise _too_many(max_elements)
        images = list(tensor.contents.bytes_contents)
    if len(images) != n:
        raise BadRequestError(f"input shape says {n} elements, the data holds {len(images)}")
    for out in req.outputs:
        if out.name != OUTPUT_NAME:
            raise BadRequestError(f"the only output is {OUTPUT_NAME!r}")
    params = {k: _param_value(v) for k, v in req.parameters.items()}
    return InferenceRequest(
        images=images,
        model=req.model_name,
        params=_params(params),
        timeout_s=_deadline(params, timeout_s),
    )


def grpc_response(resp: InferenceResponse, request_id: str) -> pb.ModelInferResponse:
    elements = _result_elements(resp)
    out = pb.ModelInferResponse(model_name=resp.model, model_version="1", id=request_id)
    tensor = out.outputs.add()
    tensor.name = OUTPUT_NAME
    tensor.datatype = "BYTES"
    tensor.shape.append(len(elements))
    out.raw_output_contents.append(encode_bytes_tensor(elements))
    return out
