# latentserve on ONNX Runtime's CUDA execution provider (falls back to CPU without a GPU).
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LATENTSERVE_MODEL_REPOSITORY=/app/models
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training/__init__.py ./training/__init__.py
RUN pip install ".[server]"
COPY models ./models

RUN useradd --system --uid 10001 latentserve
USER latentserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
# uvicorn finishes in-flight requests on SIGTERM (up to --graceful-timeout seconds)
CMD ["latentserve", "serve", "--host", "0.0.0.0", "--port", "8000", "--graceful-timeout", "30"]
