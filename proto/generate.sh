#!/usr/bin/env bash
# Regenerates service/oip/grpc_service_pb2*.py from proto/grpc_service.proto and
# service/torchserve/torchserve_inference_pb2*.py from proto/torchserve_inference.proto (pinned
# grpcio-tools, see pyproject.toml). Two edits after protoc:
# - the _grpc module imports its messages relatively (it lives in a package);
# - the messages are built in a private descriptor pool, not the process-wide default one:
#   tritonclient ships the same `inference.*` symbols, and both must load in one process (and
#   tests/torchserve_grpc.py compiles TorchServe's own proto with the TorchServe symbols).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# generate <name> <package dir>: proto/<name>.proto -> <package dir>/<name>_pb2*.py
generate() {
  local name=$1 out=$2
  $PY -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "proto/$name.proto"
  sed -i "s/^import ${name}_pb2 as/from . import ${name}_pb2 as/" "$out/${name}_pb2_grpc.py"
  sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' "$out/${name}_pb2.py"
  grep -q "DescriptorPool().AddSerializedFile" "$out/${name}_pb2.py"
  grep -q "^from . import ${name}_pb2" "$out/${name}_pb2_grpc.py"
}

generate grpc_service service/oip
generate torchserve_inference service/torchserve
