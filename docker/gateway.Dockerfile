# syntax=docker/dockerfile:1
# The SepViT gateway (`sepvit-serve`): FastAPI + gRPC, CPU torch, non-root, with a healthcheck.
#
#   docker build -f docker/gateway.Dockerfile -t sepvit-gateway:0.1.0 .
#
# It serves the demo models of model_store/ with the embedded backend, or forwards to TorchServe
# with SEPVIT_BACKEND=torchserve (docker/compose.yaml, k8s/). torch is pinned in pyproject.toml;
# the default index gives the CUDA build on Linux. For a slim CPU-only image, point pip at the
# PyTorch CPU wheel index: --build-arg PIP_EXTRA_INDEX_URL=<that index> (docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# read by pip from the environment of the RUN below; empty means the configured index only
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sepvit sepvit
COPY handlers handlers
COPY service service
# DL3013: this installs the project from the build context; every dependency is pinned in
# pyproject.toml (onnx gives the onnxruntime and int8 runtimes, openvino the fast bf16 engine)
# hadolint ignore=DL3013
RUN pip install ".[onnx,openvino]" && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sepvit-gateway" \
      org.opencontainers.image.description="SepViT serving gateway (REST, OIP v2 REST + gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    OMP_NUM_THREADS=1 \
    SEPVIT_CACHE_DIR=/tmp/sepvit-cache \
    SEPVIT_HOST=0.0.0.0 \
    SEPVIT_PORT=8000 \
    SEPVIT_GRPC_PORT=8001
RUN groupadd --system --gid 10001 sepvit \
    && useradd --system --uid 10001 --gid sepvit --home-dir /app --shell /usr/sbin/nologin sepvit
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# model configs and whatever demo weights exist (git-ignored archives are excluded)
COPY --chown=root:root model_store/ model_store/
USER 10001:10001
EXPOSE 8000 8001
# liveness only: readiness (models loaded) is the orchestrator's business
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('SEPVIT_PORT', '8000'); sys.exit(u.urlopen(f'http://127.0.0.1:{port}/v2/health/live', timeout=4).status != 200)"]
# settings come from SEPVIT_* variables (above: listen on all interfaces in the container)
ENTRYPOINT ["sepvit-serve"]
