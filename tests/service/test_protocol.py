"""Protocol pieces on their own: the .proto against tritonclient's, the BYTES codec, the one
error table, auth and request IDs."""

from __future__ import annotations

import grpc
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


# the gRPC code each HTTP status goes with, as the gateway has always answered them
HTTP_TO_GRPC = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


@pytest.mark.parametrize("kind", [*herr.ErrorKind, *serr.ServiceKind], ids=str)
def test_every_kind_has_a_status_a_grpc_code_and_a_code(kind: serr.Kind) -> None:
    status = serr.STATUS[kind]
    assert HTTP_TO_GRPC[status.http] == status.grpc
    assert grpc.StatusCode[status.grpc]  # a real gRPC code name
    assert status.doc
    info = serr.ErrorInfo.of(kind, "m")
    assert (info.http_status, info.grpc_code, info.code) == (status.http, status.grpc, kind.value)
    assert info.body("r") == {"error": {"code": kind.value, "message": "m", "request_id": "r"}}
    assert info.oip_body("r") == {"error": "m", "code": kind.value, "request_id": "r"}


@pytest.mark.parametrize(
    "cls",
    _subclasses(serr.ServiceError) + _subclasses(herr.PipelineError),
    ids=lambda c: c.__name__,
)
def test_every_error_maps_through_the_table(cls: type) -> None:
    info = serr.describe(cls("x"))
    status = serr.STATUS[cls.kind]
    assert (info.http_status, info.grpc_code, info.code) == (status.http, status.grpc, cls.kind)
    assert (info.retry_after is not None) == (info.http_status in (429, 503))


def test_framework_http_errors_map_through_the_table() -> None:
    assert serr.describe_http(404, "Not Found").code == "not_found"
    assert serr.describe_http(405, "x").grpc_code == "UNIMPLEMENTED"
    odd = serr.describe_http(418, "teapot")  # no kind names it: passed through
    assert (odd.http_status, odd.code) == (418, "http_error")


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
