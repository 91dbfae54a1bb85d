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
OUT=service/oip
$PY -m grpc_tools.protoc -Iproto --python_out=$OUT --pyi_out=$OUT --grpc_python_out=$OUT proto/grpc_service.proto
sed -i 's/^import grpc_service_pb2 as grpc__service__pb2/from . import grpc_service_pb2 as grpc__service__pb2/' $OUT/grpc_service_pb2_grpc.py
sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' $OUT/grpc_service_pb2.py
grep -q "DescriptorPool().AddSerializedFile" $OUT/grpc_service_pb2.py
grep -q "^from . import grpc_service_pb2" $OUT/grpc_service_pb2_grpc.py

OUT=service/torchserve
$PY -m grpc_tools.protoc -Iproto --python_out=$OUT --pyi_out=$OUT --grpc_python_out=$OUT proto/torchserve_inference.proto
sed -i 's/^import torchserve_inference_pb2 as/from . import torchserve_inference_pb2 as/' $OUT/torchserve_inference_pb2_grpc.py
sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' $OUT/torchserve_inference_pb2.py
grep -q "DescriptorPool().AddSerializedFile" $OUT/torchserve_inference_pb2.py
grep -q "^from . import torchserve_inference_pb2" $OUT/torchserve_inference_pb2_grpc.py
