"""One TorchServe gRPC ``Predictions`` call from the command line (the gRPC counterpart of
``curl .../predictions/<model>``); prints the model's answer.

    .venv/bin/python scripts/torchserve_grpc_client.py sepvit_lite_shapes_det scene.jpg \\
        --param score_threshold=0.5

The key comes from TorchServe's ``key_file.json`` (``--token-file``, default: the working
directory's) or ``--token``. Parameters go as extra gRPC inputs, the way the handler reads them.
Uses the gateway's committed stubs of TorchServe's ``inference.proto``. Exit status: 0 when
TorchServe answered (the answer may still be a per-image error body, as TorchServe 0.12 sends
them with status OK), 1 on a gRPC error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from pydantic import SecretStr

from service.backends import torchserve_inference_pb2 as pb
from service.backends import torchserve_inference_pb2_grpc as pb_grpc
from service.backends.torchserve import TokenSource


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="TorchServe model name")
    p.add_argument("image", type=Path, help="image file, sent as the input 'data'")
    p.add_argument("--address", default="127.0.0.1:7070", help="gRPC inference address")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"))
    p.add_argument("--token", help="the inference key itself (instead of --token-file)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds")
    a = p.parse_args(argv)
    inputs = {"data": a.image.read_bytes()}
    for item in a.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--param wants NAME=VALUE, got {item!r}")
        inputs[name] = value.encode()
    token = TokenSource(
        SecretStr(a.token) if a.token else None, None if a.token else a.token_file
    ).get()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(a.address) as channel:
        stub = pb_grpc.InferenceAPIsServiceStub(channel)
        try:
            reply = stub.Predictions(
                pb.PredictionsRequest(model_name=a.model, input=inputs),
                metadata=metadata,
                timeout=a.timeout,
            )
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(reply.prediction.decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
