# syntax=docker/dockerfile:1
# unmaskd: diffusion-LM inference server, with the embedded model and its policies inside.
#
#   docker build -t unmaskd:cuda .                 # default target: CUDA runtime
#   docker build -t unmaskd:cpu --target cpu .     # CPU only, python:3.11-slim
#   docker run -p 8000:8000 unmaskd:cpu
#   docker run --gpus all -p 8000:8000 unmaskd:cuda
#
# Configuration is by UNMASKD_* environment variables (UNMASKD_MAX_BATCH_SIZE=8, ...) or by
# flags after the image name (`docker run unmaskd:cpu --max-batch-size 8`).
# CUDA and torch are build arguments: torch 2.13's CUDA wheels are built for CUDA 13.0; for
# another pairing set all three, e.g. --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg TORCH_VERSION=...

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---- CPU: build the virtual environment --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"
# torch first, from the CPU index: an unpinned torch from PyPI is a multi-GB CUDA build.
RUN python -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}"
WORKDIR /src
COPY . .
# The embedded model and policies are package data (dllm/embedded), so the wheel carries them.
RUN pip install --no-cache-dir . && unmaskd --help >/dev/null

# ---- CPU: runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UNMASKD_PORT=8000 \
    UNMASKD_DEVICE=cpu
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"
RUN groupadd --system --gid 10001 unmaskd \
    && useradd --system --uid 10001 --gid unmaskd --create-home --home-dir /home/unmaskd unmaskd
COPY --from=cpu-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/unmaskd
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UNMASKD_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["unmaskd", "serve", "--host", "0.0.0.0"]
CMD []

# ---- CUDA: build the virtual environment -------------------------------------------------------
FROM ${CUDA_IMAGE} AS cuda-build
ARG TORCH_VERSION
ARG TORCH_INDEX
ENV DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . && unmaskd --help >/dev/null

# ---- CUDA: runtime (the default target) --------------------------------------------------------
FROM ${CUDA_IMAGE} AS cuda
ENV DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UNMASKD_PORT=8000 \
    UNMASKD_DEVICE=cuda
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"
# The same python3 as the build stage, so the copied venv's interpreter links resolve.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 unmaskd \
    && useradd --system --uid 10001 --gid unmaskd --create-home --home-dir /home/unmaskd unmaskd
COPY --from=cuda-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/unmaskd
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UNMASKD_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["unmaskd", "serve", "--host", "0.0.0.0"]
CMD []
