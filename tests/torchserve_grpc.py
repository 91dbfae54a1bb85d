"""Python stubs for TorchServe's gRPC inference API, compiled from the ``.proto`` that ships in
TorchServe's own frontend jar (``ts/frontend/model-server.jar``, ``proto/inference.proto``), so
the stubs always match the TorchServe that is installed. Test-only: the gateway uses its committed
stubs (``service/torchserve/torchserve_inference_pb2*``), which a test compares with these.

Needs ``torchserve`` and ``grpcio-tools`` (imported lazily). The proto imports
``google/rpc/status.proto``, which grpcio-tools does not bundle; a minimal equivalent of that
public message (code, message, details) is written beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import zipfile
from pathlib import Path
from types import ModuleType

__all__ = ["jar_path", "load_stubs"]

_STATUS_PROTO = """syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}
"""


def jar_path() -> Path:
    import ts

    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def load_stubs(cache_dir: str | Path = ".cache/torchserve-proto") -> tuple[ModuleType, ModuleType]:
    """Return ``(inference_pb2, inference_pb2_grpc)``, compiling them on first use."""
    from grpc_tools import protoc

    jar = jar_path()
    with zipfile.ZipFile(jar) as zf:
        proto = zf.read("proto/inference.proto")
    digest = hashlib.sha256(proto).hexdigest()[:16]
    out = Path(cache_dir).resolve() / digest
    if not (out / "inference_pb2_grpc.py").is_file():
        src = out / "src"
        (src / "google" / "rpc").mkdir(parents=True, exist_ok=True)
        (src / "inference.proto").write_bytes(proto)
        (src / "google" / "rpc" / "status.proto").write_text(_STATUS_PROTO)
        include = Path(protoc.__file__).resolve().parent / "_proto"
        for name in ("inference.proto", "google/rpc/status.proto"):
            rc = protoc.main(
                [
                    "protoc",
                    f"-I{src}",
                    f"-I{include}",
                    f"--python_out={out}",
                    f"--grpc_python_out={out}",
                    str(src / name),
                ]
            )
            if rc != 0:
                raise RuntimeError(f"protoc failed ({rc}) on {name} from {jar}")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")
