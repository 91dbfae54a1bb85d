#!/usr/bin/env bash
# The GPU check (issue 21): TensorRT fp16 engines with parity, TensorRT / ONNX Runtime CUDA /
# eager CUDA latency and throughput at batch 1 and 8, and the gateway on `runtime: tensorrt`
# under a short closed-loop load. Writes bench/results/gpu_<gpu>.json (bench/gpu_check.py).
#
#   bash bench/gpu_check.sh fetch   # here, with a package registry: wheels for an offline GPU
#                                   # machine into .whl/ (Python 3.12, manylinux x86-64)
#   bash bench/gpu_check.sh         # on the GPU machine, from the repository root
#
# On the GPU machine the script uses the python that has a CUDA torch (PYTHON, else python3):
# 1. a CUDA torch: the one installed if torch.cuda.is_available(), else `pip install torch`
#    from the registry's default index (its Linux wheels are CUDA builds);
# 2. TensorRT (TENSORRT_SPEC, default tensorrt-cu13 for CUDA 13 torch, tensorrt-cu12 for 12) and
#    onnxruntime-gpu, and the gateway's dependencies, from .whl/ when present (no network),
#    else from the registry; a package that cannot be installed makes its cells fail with the
#    reason in the JSON, the rest still runs;
# 3. the project from this checkout on PYTHONPATH (not pip-installed: pyproject pins the CPU
#    torch build).
# Extra arguments go to bench/gpu_check.py (e.g. --seconds 1 --load-seconds 3).
set -uo pipefail
cd "$(dirname "$0")/.."

GATEWAY_DEPS=(fastapi==0.163.2 uvicorn==0.54.0 pydantic-settings==2.16.3
    python-multipart==0.0.34 prometheus-client==0.26.0 safetensors==0.8.0 pyyaml pillow)

if [[ "${1:-}" == fetch ]]; then
    # wheels for the lent GPU machines (Python 3.12, x86-64, no network there). TensorRT and
    # onnxruntime-gpu are large: where they exceed what can be carried, install them on a
    # machine with network instead.
    mkdir -p .whl
    pip_dl=(python3 -m pip download --only-binary=:all: --python-version 3.12
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 -d .whl)
    "${pip_dl[@]}" "${GATEWAY_DEPS[@]}" || exit 1
    "${pip_dl[@]}" --no-deps "${TENSORRT_SPEC:-tensorrt-cu13}" onnxruntime-gpu==1.31.1 ||
        echo "gpu_check fetch: TensorRT / onnxruntime-gpu wheels not fetched" >&2
    du -sh .whl
    exit 0
fi

PY=${PYTHON:-python3}
log() { printf '== gpu_check: %s\n' "$*" >&2; }
pip_install() {  # from .whl/ when it has wheels, else the registry; never fatal
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --find-links .whl "$@" && return 0
    fi
    timeout 900 "$PY" -m pip install -q "$@" || { log "could not install: $*"; return 1; }
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    log "no CUDA torch: installing torch"
    pip_install torch || { log "no CUDA torch, giving up"; exit 3; }
fi
CUDA_MAJOR=$("$PY" -c 'import torch; print((torch.version.cuda or "13").split(".")[0])')
log "torch $("$PY" -c 'import torch; print(torch.__version__)'), CUDA major $CUDA_MAJOR"
"$PY" -c 'import fastapi, uvicorn, pydantic_settings, multipart, prometheus_client' 2>/dev/null ||
    pip_install "${GATEWAY_DEPS[@]}"
"$PY" -c 'import tensorrt' 2>/dev/null || pip_install "${TENSORRT_SPEC:-tensorrt-cu$CUDA_MAJOR}"
"$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
    2>/dev/null || pip_install onnxruntime-gpu==1.31.1
"$PY" -c 'import onnx, onnxscript' 2>/dev/null || pip_install onnx==1.23.2 onnxscript==0.7.2

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec "$PY" bench/gpu_check.py "$@"
