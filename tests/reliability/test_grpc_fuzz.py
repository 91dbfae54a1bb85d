"""Fuzz ``ModelInfer`` over gRPC with random tensors: random model names and versions, input
counts, names, datatypes, shapes (negative, zero, huge), contents of every type, raw contents
(valid and broken BYTES encodings, real and corrupt images), parameters of every type and
requested outputs. Every call must end with a status from the documented table, never INTERNAL
or UNKNOWN, and the server must stay up and keep answering valid requests."""

from __future__ import annotations

import struct
from collections import Counter

import grpc
import numpy as np
import pytest

from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from service.processes import GatewayProcess
from tests.service.conftest import png

pytestmark = pytest.mark.integration

N_CASES = 400
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DATATYPES = ["BYTES", "BYTES", "BYTES", "FP32", "INT64", "UINT8", "BOOL", "FP16", "", "bytes", "🙂"]


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.images = [png(32, 40, 1), png(64, 64, 2), png(17, 5, 3)]

    def pick(self, seq: list) -> object:
        return seq[int(self.rng.integers(len(seq)))]

    def blob(self) -> bytes:
        kind = int(self.rng.integers(5))
        if kind == 0:
            return bytes(self.rng.integers(0, 256, int(self.rng.integers(0, 200)), dtype=np.uint8))
        if kind == 1:
            img = self.pick(self.images)
            assert isinstance(img, bytes)
            return img[: int(self.rng.integers(1, len(img)))]  # truncated
        return self.pick(self.images)  # type: ignore[return-value]

    def shape(self, n: int) -> list[int]:
        if self.rng.random() < 0.6:
            return [n]
        dims = [-1, 0, 1, 2, 3, 2**40, 2**62]
        return [int(self.pick(dims)) for _ in range(int(self.rng.integers(0, 4)))]  # type: ignore[call-overload]

    def tensor(self) -> pb.ModelInferRequest.InferInputTensor:
        n = int(self.rng.integers(0, 5))
        name = str(self.pick(["IMAGE", "IMAGE", "", "x" * 300, "INPUT0"]))
        t = pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=str(self.pick(DATATYPES)), shape=self.shape(n)
        )
        which = int(self.rng.integers(4))
        if which == 0:
            t.contents.bytes_contents.extend(self.blob() for _ in range(n))
        elif which == 1:
            t.contents.fp32_contents.extend(self.rng.normal(size=n).astype(np.float32).tolist())
        elif which == 2:
            t.contents.int64_contents.extend(int(x) for x in self.rng.integers(-9, 9, n))
        if self.rng.random() < 0.2:
            t.parameters["binary_data_size"].int64_param = int(self.rng.integers(-5, 100))
        return t

    def parameters(self, req: pb.ModelInferRequest) -> None:
        for _ in range(int(self.rng.integers(0, 4))):
            key = str(self.pick(["top_k", "score_threshold", "format", "binary_data_output", "z"]))
            p = req.parameters[key]
            kind = int(self.rng.integers(5))
            if kind == 0:
                p.int64_param = int(self.pick([-1, 0, 1, 3, 1001, 2**62]))  # type: ignore[call-overload]
            elif kind == 1:
                p.double_param = float(self.pick([-0.5, 0.0, 0.3, 1.0, 2.0, np.nan, np.inf]))  # type: ignore[arg-type]
            elif kind == 2:
                p.string_param = str(self.pick(["png", "rle", "overlay", "jpeg", "", "5", "\x00"]))
            elif kind == 3:
                p.bool_param = bool(self.rng.random() < 0.5)
            else:
                p.uint64_param = int(self.rng.integers(0, 2**63))

    def well_formed(self) -> pb.ModelInferRequest:
        """One BYTES input whose shape matches its data: fuzzes images and parameters only."""
        req = pb.ModelInferRequest(model_name=str(self.pick(["cls", "det", "seg"])))
        items = [self.blob() for _ in range(int(self.rng.integers(1, 4)))]
        t = req.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(items)])
        if self.rng.random() < 0.5:
            t.contents.bytes_contents.extend(items)
        else:
            req.raw_input_contents.append(_bytes_tensor(items))
        self.parameters(req)
        return req

    def request(self) -> pb.ModelInferRequest:
        if self.rng.random() < 0.35:
            return self.well_formed()
        req = pb.ModelInferRequest(
            model_name=str(
                self.pick(["cls", "det", "seg", "cls", "", "nope", "../cls", "c" * 100])
            ),
            model_version=str(self.pick(["", "", "1", "2", "latest"])),
            id=str(self.pick(["", "req-1", "\u2603" * 10])),
        )
        req.inputs.extend(self.tensor() for _ in range(int(self.pick([1, 1, 1, 0, 2]))))  # type: ignore[call-overload]
        raw = int(self.rng.integers(5))
        if raw == 1:  # a valid BYTES tensor, whatever the shape says
            req.raw_input_contents.append(
                _bytes_tensor([self.blob() for _ in range(int(self.rng.integers(0, 4)))])
            )
        elif raw == 2:  # a broken one: lengths that lie
            req.raw_input_contents.append(
                struct.pack("<I", int(self.rng.integers(0, 2**32))) + self.blob()
            )
        elif raw == 3:
            req.raw_input_contents.extend([b"", b"\x00"])
        self.parameters(req)
        for _ in range(int(self.pick([0, 0, 1, 2]))):  # type: ignore[call-overload]
            req.outputs.add(name=str(self.pick(["RESULT", "RESULT", "OUTPUT0", ""])))
        return req


def test_model_infer_fuzz(gateway: GatewayProcess) -> None:
    fuzzer = Fuzzer(seed=1234)
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(N_CASES):
            req = fuzzer.request()
            try:
                stub.ModelInfer(req, timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
                assert code in DOCUMENTED, (i, code, err.details(), req)
            seen[code.name] += 1
        # still serving, and answering correctly
        good = pb.ModelInferRequest(model_name="cls")
        t = good.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(png())
        reply = stub.ModelInfer(good, timeout=20)
        assert reply.outputs[0].name == "RESULT" and len(reply.raw_output_contents) == 1
    print(dict(seen))
    assert seen["OK"] >= 20 and seen["INVALID_ARGUMENT"] >= 100 and seen["NOT_FOUND"] >= 20
    assert gateway.proc.poll() is None
