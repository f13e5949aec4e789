# syntax=docker/dockerfile:1
# latentserve images: two targets on one Python (CPython 3.11, Debian slim), the server's
# dependencies installed from hash-checked locks (requirements/*.txt; scripts/lock.sh).
#
#   docker build --target cpu  -t latentserve:cpu  .   # CPU onnxruntime wheel; runs anywhere
#   docker build --target cuda -t latentserve:cuda .   # onnxruntime-gpu + NVIDIA's CUDA 13 and
#                                                      # cuDNN 9 runtime wheels
#
# The cuda target needs the NVIDIA Container Toolkit and an NVIDIA driver >= 580.65.06 (CUDA
# 13.0) on the host; NVIDIA_REQUIRE_CUDA makes the toolkit refuse an older driver at start, and
# LATENTSERVE_REQUIRE_GPU=true makes the server exit instead of falling back to the CPU.
# Pin the base image by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:...@sha256:...
# tests/test_docker.py lints this file, checks these invariants and runs the cpu target's install
# steps and command in a fresh venv; no image is built in this project's CI (no Docker engine).

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH

# -- dependencies: one virtual environment per target, each from its own lock ----------------
FROM base AS deps-cpu
WORKDIR /src
COPY requirements/server-cpu.txt requirements/
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --require-hashes --requirement requirements/server-cpu.txt

FROM base AS deps-cuda
WORKDIR /src
COPY requirements/server-cuda.txt requirements/
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --require-hashes --requirement requirements/server-cuda.txt

# -- what both images share: an unprivileged user, how to run and how to probe ---------------
FROM base AS runtime
RUN groupadd --system --gid 10001 latentserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin latentserve
WORKDIR /app
ENV PYTHONPATH=/app \
    LATENTSERVE_MODEL_REPOSITORY=/app/models \
    LATENTSERVE_LOG_JSON=true
EXPOSE 8000
# /readyz through the standard library: no curl in the image; unhealthy until every model loaded
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "service.healthcheck", "http://127.0.0.1:8000/readyz"]
ENTRYPOINT ["python", "-m", "service"]
# uvicorn finishes in-flight requests on SIGTERM for up to --graceful-timeout seconds: give the
# container longer than that to stop (compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds)
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--graceful-timeout", "30"]

FROM runtime AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
    LATENTSERVE_PROVIDERS=cuda,cpu \
    LATENTSERVE_REQUIRE_GPU=true
COPY --from=deps-cuda /opt/venv /opt/venv
COPY service ./service
COPY models ./models
RUN python -m compileall -q service
USER 10001:10001

# last, so a plain `docker build .` gives the image that runs on any host
FROM runtime AS cpu
ENV LATENTSERVE_PROVIDERS=cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY service ./service
COPY models ./models
RUN python -m compileall -q service
USER 10001:10001
