"""Protocol pieces on their own: the .proto against tritonclient's, the BYTES codec, the one
error table, auth and request IDs."""

from __future__ import annotations

import pytest
import tritonclient.grpc.service_pb2 as triton_pb  # loads beside ours: private descriptor pool

from handlers import errors as herr
from service import errors as serr
from service.auth import TokenChecker, request_id
from service.oip import grpc_service_pb2 as pb
from service.oip.codec import decode_bytes_tensor, encode_bytes_tensor, grpc_request


def _fields(desc, prefix: str = "") -> dict[str, tuple[int, int, bool]]:
    out = {}
    for f in desc.fields:
        out[f"{prefix}{desc.name}.{f.name}"] = (f.number, f.type, f.is_repeated)
    for nested in desc.nested_types:
        out.update(_fields(nested, f"{prefix}{desc.name}."))
    return out


def test_proto_matches_the_public_protocol() -> None:
    assert pb.DESCRIPTOR.package == "inference"
    for name, desc in pb.DESCRIPTOR.message_types_by_name.items():
        ours, theirs = _fields(desc), _fields(triton_pb.DESCRIPTOR.message_types_by_name[name])
        assert {k: theirs.get(k) for k in ours} == ours, name
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
    # and a message written by one side reads on the other
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x00\x00\x00x"])
    back = triton_pb.ModelInferRequest.FromString(msg.SerializeToString())
    assert back.model_name == "m" and back.raw_input_contents[0] == b"\x01\x00\x00\x00x"


def test_bytes_tensor_round_trip_and_truncation() -> None:
    items = [b"", b"abc", bytes(range(256))]
    raw = encode_bytes_tensor(items)
    assert decode_bytes_tensor(raw) == items
    for cut in (raw[:2], raw[:-1]):
        with pytest.raises(serr.BadRequestError):
            decode_bytes_tensor(cut)


HTTP_TO_GRPC = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.mark.parametrize(
    "exc",
    [
        cls("x")
        for cls in (
            serr.BadRequestError,
            serr.UnauthorizedError,
            serr.ForbiddenError,
            serr.ModelNotFoundError,
            serr.PayloadTooLargeError,
            serr.UnsupportedMediaTypeError,
            serr.QueueFullError,
            serr.OverloadedError,
            serr.NotReadyError,
            serr.DeadlineExceededError,
            herr.ImageDecodeError,
            herr.UnsupportedImageError,
            herr.ImageTooLargeError,
            herr.TooManyImagesError,
            herr.BadParameterError,
        )
    ],
    ids=lambda e: type(e).__name__,
)
def test_one_table_for_http_and_grpc(exc: Exception) -> None:
    info = serr.describe(exc)
    assert HTTP_TO_GRPC[info.http_status] == info.grpc_code
    assert (info.retry_after is not None) == (info.http_status in (429, 503))


def test_unknown_errors_are_internal_and_say_nothing() -> None:
    info = serr.describe(KeyError("secret detail"))
    assert (info.http_status, info.grpc_code) == (500, "INTERNAL")
    assert "secret" not in info.message


def test_token_checker() -> None:
    off = TokenChecker([])
    off.check(None)  # auth off: anything goes
    on = TokenChecker([b"alpha", b"beta"])
    on.check("Bearer beta")
    on.check("bearer  alpha ")
    for bad, err in [
        (None, serr.UnauthorizedError),
        ("Basic alpha", serr.UnauthorizedError),
        ("Bearer", serr.UnauthorizedError),
        ("Bearer alph", serr.ForbiddenError),
        ("Bearer alphaa", serr.ForbiddenError),
    ]:
        with pytest.raises(err):
            on.check(bad)


def test_request_ids() -> None:
    assert request_id("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in (None, "", "x" * 129, "has space", "new\nline"):
        made = request_id(bad)
        assert made != bad and len(made) == 32


def test_timeout_parameter_shortens_the_deadline() -> None:
    def timeout(value: pb.InferParameter | None, transport: float | None) -> float | None:
        req = pb.ModelInferRequest(model_name="m", raw_input_contents=[encode_bytes_tensor([b"x"])])
        req.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
        if value is not None:
            req.parameters["timeout"].CopyFrom(value)
        return grpc_request(req, transport, 16).timeout_s

    assert timeout(None, 2.0) == 2.0 and timeout(None, None) is None
    assert timeout(pb.InferParameter(int64_param=500_000), None) == 0.5
    assert timeout(pb.InferParameter(int64_param=500_000), 0.2) == 0.2
    for bad in (pb.InferParameter(int64_param=0), pb.InferParameter(string_param="1s")):
        with pytest.raises(serr.BadRequestError):
            timeout(bad, None)
