# The LSTM serving image (needs BuildKit, the default builder since Docker 23).
#   CPU (default)   docker build -t lstm-serve .
#   GPU (CUDA)      docker build --build-arg VARIANT=gpu -t lstm-serve:gpu .
#   load client     docker build --target bench -t lstm-serve:bench .
# The serving image holds only the serving dependencies (no torch, no compilers) in a
# virtual environment made in a builder stage, and the model repository at /models.
# See deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# cpu: onnxruntime on python:3.11-slim. gpu: onnxruntime-gpu on CUDA 12 + cuDNN 9.
ARG VARIANT=cpu

# ---------------------------------------------------------------- base images
FROM ${PYTHON_IMAGE} AS cpu-base
ENV LSTM_SERVE_DEVICE=cpu

# Ubuntu 24.04's Python 3.12; the same interpreter path in builder and runtime.
FROM ${CUDA_IMAGE} AS gpu-base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV LSTM_SERVE_DEVICE=cuda

# A fixed, unprivileged UID/GID, so that Kubernetes' runAsNonRoot can verify it.
FROM ${VARIANT}-base AS base
RUN groupadd --system --gid 10001 lstm \
    && useradd --system --uid 10001 --gid lstm --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin lstm
# HOME on /tmp (a tmpfs or emptyDir when the root filesystem is read-only): onnxruntime
# keeps a small cache there.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- builder
FROM base AS builder
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/venv
# Dependencies first, in a layer of their own: a code change does not reinstall them.
# The gpu variant installs onnxruntime-gpu INSTEAD of onnxruntime (same module).
COPY pyproject.toml README.md ./
COPY deploy/docker/requirements.py /tmp/requirements.py
RUN python3 /tmp/requirements.py pyproject.toml --variant "${VARIANT}" > /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip install -r /tmp/requirements.txt
COPY service ./service
COPY models/*.py ./models/
RUN /opt/venv/bin/python -m pip install --no-deps . \
    && /opt/venv/bin/python -m pip uninstall --yes pip

# ---------------------------------------------------------------- load-test client
# lstm-bench and the bench extra (httpx, tqdm, matplotlib); CPU only.
FROM builder AS bench-builder
RUN python3 -m venv /opt/venv \
    && python3 /tmp/requirements.py pyproject.toml --extra bench > /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip install -r /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip uninstall --yes pip

FROM base AS bench
COPY --from=bench-builder /opt/venv /opt/venv
# Results (--json, --plot) go to /results: a volume the unprivileged user can write.
RUN install -d -o 10001 -g 10001 /results
ENV MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["lstm-bench"]
CMD ["--help"]

# ---------------------------------------------------------------- serving venv
# The same environment less the load-testing code, which the server never imports
# (tests/test_architecture.py checks that it starts without it).
FROM builder AS runtime-venv
RUN rm -rf /opt/venv/lib/python3*/site-packages/service/loadtest /opt/venv/bin/lstm-bench

# ---------------------------------------------------------------- serving image
FROM base AS runtime
LABEL org.opencontainers.image.title="lstm-serve" \
      org.opencontainers.image.description="Stacked LSTMs exported to ONNX, served with onnxruntime"
COPY --from=runtime-venv /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/lstm-serve/healthcheck.py
# Root-owned and world-readable: the server reads the models and cannot change them.
# Mount a repository over /models to serve other models; checkpoint.pt files (torch
# weights, not served) are left out by .dockerignore.
COPY models/repository /models
ENV LSTM_SERVE_HOST=0.0.0.0 \
    LSTM_SERVE_PORT=8000 \
    LSTM_SERVE_GRPC_PORT=8001 \
    LSTM_SERVE_MODEL_REPOSITORY=/models \
    LSTM_SERVE_WORKERS=1 \
    LSTM_SERVE_INTRA_OP_THREADS=1 \
    LSTM_SERVE_INFERENCE_THREADS=1 \
    LSTM_SERVE_LOG_FORMAT=json \
    LSTM_SERVE_AUTH=required
# Keys are required (docs/security.md): pass LSTM_SERVE_API_KEYS='["app:inference:<secret>"]'
# or mount a file and point LSTM_SERVE_API_KEYS_FILE at it; make a secret with
# openssl rand -hex 32. Health probes need no key.
USER 10001:10001
WORKDIR /tmp
# 8000: HTTP (/v1, V2 REST); 8001: V2 over gRPC (Triton's GRPCInferenceService).
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/lstm-serve/healthcheck.py"]
# On SIGTERM uvicorn stops accepting and drains requests in flight for up to 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lstm-serve"]
