"""TorchServe's gRPC inference API from the command line, with its token auth.

    .venv/bin/python scripts/torchserve_client.py wait [MODEL ...] [--timeout 300]
    .venv/bin/python scripts/torchserve_client.py predict MODEL IMAGE [--param NAME=VALUE ...]

``wait`` returns once every model (default: the three demo models) has a loaded worker; TorchServe's
``Ping`` says ``Healthy`` as soon as the worker processes run, before the handlers have loaded
their models (the first load exports each to ONNX). ``predict`` sends one image
as the input ``data`` (parameters as extra inputs, the way the handler reads them) and prints the
model's answer: the gRPC counterpart of ``curl .../predictions/<model>``.

The key comes from TorchServe's ``key_file.json`` in the working directory (``--token-file``),
read afresh on each try while ``wait`` runs, since TorchServe writes it at start-up. Uses the
gateway's committed stubs of TorchServe's ``inference.proto``. Exit status: 0 when TorchServe
answered (the answer may be a per-image error body: TorchServe 0.12 sends those with status OK),
1 on a gRPC error or a timeout, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import empty_pb2
from pydantic import SecretStr

from service.settings import DEMO_MODELS
from service.torchserve import torchserve_inference_pb2 as pb
from service.torchserve import torchserve_inference_pb2_grpc as pb_grpc
from service.torchserve.backend import TokenSource


def _metadata(a: argparse.Namespace) -> list[tuple[str, str]]:
    source = TokenSource(SecretStr(a.token) if a.token else None, None if a.token else a.token_file)
    token = source.get()
    return [("authorization", f"Bearer {token}")] if token else []


def wait(stub: pb_grpc.InferenceAPIsServiceStub, a: argparse.Namespace) -> int:
    """Until each model answers a ``Predictions`` call without an image (the handler refuses it
    with an error body, without running the model: proof that its worker has loaded)."""
    deadline = time.monotonic() + a.timeout
    pending = list(a.models)
    last = "no answer yet"
    while pending and time.monotonic() < deadline:
        try:
            stub.Ping(empty_pb2.Empty(), metadata=_metadata(a), timeout=5)
            for name in list(pending):
                left = max(1.0, deadline - time.monotonic())
                stub.Predictions(
                    pb.PredictionsRequest(model_name=name),
                    metadata=_metadata(a),
                    timeout=min(30.0, left),
                )
                pending.remove(name)
                print(f"{name} is ready")
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            time.sleep(1)
    if pending:
        print(f"not ready after {a.timeout:g} s: {pending} ({last})", file=sys.stderr)
        return 1
    return 0


def predict(stub: pb_grpc.InferenceAPIsServiceStub, a: argparse.Namespace) -> int:
    inputs = {"data": a.image.read_bytes()}
    for item in a.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"--param wants NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        inputs[name] = value.encode()
    try:
        reply = stub.Predictions(
            pb.PredictionsRequest(model_name=a.model, input=inputs),
            metadata=_metadata(a),
            timeout=a.timeout,
        )
    except grpc.RpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(reply.prediction.decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1:7070", help="gRPC inference address")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"))
    p.add_argument("--token", help="the inference key itself (instead of --token-file)")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wait", help="until the models have loaded")
    w.add_argument(
        "models",
        nargs="*",
        default=[m.name for m in DEMO_MODELS],
        metavar="MODEL",
        help="TorchServe model names (default: the three demo models)",
    )
    w.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    r = sub.add_parser("predict", help="one image through one model")
    r.add_argument("model", help="TorchServe model name")
    r.add_argument("image", type=Path, help="image file")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    a = p.parse_args(argv)
    with grpc.insecure_channel(a.address) as channel:
        stub = pb_grpc.InferenceAPIsServiceStub(channel)
        return wait(stub, a) if a.command == "wait" else predict(stub, a)


if __name__ == "__main__":
    raise SystemExit(main())
