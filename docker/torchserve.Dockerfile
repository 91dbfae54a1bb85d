# syntax=docker/dockerfile:1
# TorchServe with the SepViT handlers and the demo archives, CPU or GPU (CUDA + TensorRT).
#
#   docker build -f docker/torchserve.Dockerfile -t sepvit-torchserve:0.1.0 .
#   docker build -f docker/torchserve.Dockerfile --build-arg FLAVOUR=gpu -t sepvit-torchserve:0.1.0-gpu .
#
# cpu: Debian slim Python base, CPU torch (pass the PyTorch CPU wheel index as
#      PIP_EXTRA_INDEX_URL, as for the gateway; docs/deploy.md).
# gpu: CUDA runtime base (CUDA_IMAGE; torch==2.13.0 from the default index is built for CUDA 13),
#      CUDA torch, TensorRT (TENSORRT_SPEC); the archives get deviceType gpu and GPU_RUNTIME.
# The archives are built here from model_store/*/model.safetensors + model-config.yaml; a model
# without a checkpoint is skipped with a message (run `make models` first). On Kubernetes an
# init container rebuilds them from the chart's model-config ConfigMap (k8s/).
ARG FLAVOUR=cpu
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS base-cpu
# DL3008: Debian's stable security updates replace exact versions; the base tag pins the release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_IMAGE} AS base-gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# DL3008: as above, the base tag pins the Ubuntu release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

# DL3006: base-cpu / base-gpu are the stages above (tagged there), picked by FLAVOUR
# hadolint ignore=DL3006
FROM base-${FLAVOUR} AS base
RUN groupadd --system --gid 10001 model-server \
    && useradd --system --uid 10001 --gid model-server --home-dir /home/model-server \
        --create-home --shell /usr/sbin/nologin model-server

FROM base AS build
ARG FLAVOUR
ARG PIP_EXTRA_INDEX_URL=""
ARG TENSORRT_SPEC="tensorrt-cu13==11.4.0.106"
ARG GPU_RUNTIME=tensorrt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sepvit sepvit
COPY handlers handlers
COPY service service
# DL3013: the project from the build context (its dependencies are pinned in pyproject.toml) and
# TENSORRT_SPEC, pinned by the build argument
# hadolint ignore=DL3013
RUN pip install ".[onnx,openvino,torchserve]" \
    && if [ "$FLAVOUR" = gpu ]; then pip install "$TENSORRT_SPEC"; fi \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
COPY model_store/ model_store/
RUN mkdir -p /model-store \
    && for cfg in model_store/*/model-config.yaml; do \
        dir="$(dirname "$cfg")"; name="$(basename "$dir")"; \
        if [ ! -f "$dir/model.safetensors" ]; then \
            echo "skipping $name: no $dir/model.safetensors (run make models)"; continue; \
        fi; \
        if [ "$FLAVOUR" = gpu ]; then \
            sed -i -E "s/^deviceType: cpu/deviceType: gpu/; s/^(  runtime: )[a-z0-9]+/\1${GPU_RUNTIME}/" "$cfg"; \
        fi; \
        sepvit-archive --checkpoint "$dir/model.safetensors" --config "$cfg" --name "$name" \
            --export-path /model-store --force; \
    done

FROM base
LABEL org.opencontainers.image.title="sepvit-torchserve" \
      org.opencontainers.image.description="TorchServe with the SepViT handlers and demo archives" \
      org.opencontainers.image.licenses="Apache-2.0"
# SEPVIT_CACHE_DIR: ONNX exports and TensorRT engines; TEMP: TorchServe's Java temp dir;
# LOG_LOCATION/METRICS_LOCATION: its log files. All are on writable mounts on Kubernetes, where
# the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    OMP_NUM_THREADS=1 \
    SEPVIT_CACHE_DIR=/tmp/sepvit-cache \
    TEMP=/tmp \
    LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs
COPY --from=build /opt/venv /opt/venv
COPY --from=build /model-store /home/model-server/model-store
# checkpoints and model configs: the init container on Kubernetes re-archives from these
COPY model_store/ /opt/sepvit/model_store/
COPY docker/config.properties /home/model-server/config.properties
RUN mkdir -p /home/model-server/logs && chown model-server:model-server /home/model-server/logs
WORKDIR /home/model-server
USER 10001:10001
# inference REST and gRPC; management (8081/7071) and metrics (8082) stay on loopback
EXPOSE 8080 7070
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/ping', timeout=4).status != 200)"]
# tini -g: SIGTERM reaches the Java frontend too (the Python launcher does not forward it)
ENTRYPOINT ["tini", "-g", "--", "torchserve", "--foreground", "--ncs"]
CMD ["--ts-config", "/home/model-server/config.properties"]
