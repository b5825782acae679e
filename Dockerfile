# vace-server on one or more NVIDIA GPUs. Weights are not in the image: mount them at /weights.
#
#   docker build -t vace-server .
#   docker run --gpus all -p 8000:8000 -v /models/vace:/weights -v vace-data:/data \
#       -e VACE_API_KEYS=change-me vace-server
#
# Every argument after the image name is passed to `vace serve` (e.g. `--memory-mode fp8`, `--tls`,
# `--public-url https://vace.example.com`). The container listens on all interfaces, so it needs an API key
# (VACE_API_KEYS, comma-separated, or --api-keys-file) or, on a trusted network only, --insecure-no-auth.
# Get the weights once with the same image:
#   docker run --rm -v /models/vace:/weights --entrypoint vace vace-server weights download --dir /weights

# PyTorch's wheels bring their own CUDA libraries; the base image brings CUDA and cuDNN for onnxruntime-gpu (DWPose)
# and the NVIDIA container settings. Ubuntu 24.04: Python 3.12.
ARG BASE_IMAGE=nvidia/cuda:12.8.0-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    VACE_WEIGHTS_DIR=/weights \
    VACE_DATA_DIR=/data

# openssl: `vace serve --tls` makes its self-signed certificate with it. ffmpeg comes with imageio-ffmpeg.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openssl ca-certificates libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The largest layer on its own, so that changing the project does not download PyTorch again.
RUN pip install torch torchvision

WORKDIR /opt/vace-server
COPY pyproject.toml README.md ./
COPY server ./server
COPY pipelines ./pipelines
COPY preprocessors ./preprocessors
COPY weights ./weights
# DWPose runs in onnxruntime: the GPU build replaces the CPU one the project depends on (same module name).
RUN pip install . \
    && pip uninstall -y onnxruntime \
    && pip install onnxruntime-gpu

VOLUME ["/weights", "/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import ssl, sys, urllib.request as u\nfor url in ('http://127.0.0.1:8000/health', 'https://127.0.0.1:8000/health'):\n    try:\n        u.urlopen(url, timeout=5, context=ssl._create_unverified_context()); sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)"]

ENTRYPOINT ["vace", "serve", "--host", "0.0.0.0", "--port", "8000"]
