# GPU training image: CUDA runtime, the project with its vLLM extra, a non-root user, `trace-rl`
# as the entry point. Dependencies are installed before the code is copied, so a code change
# rebuilds only the last layers.
#   docker build -t trace-rl .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/runs:/app/runs" trace-rl run --set model.device=cuda
# (the image's own user is uid 1000; --user makes files in the bind mount yours: HOME, PREFECT_HOME and
# HF_HOME point into /home/trace, writable by any uid, so Prefect's temporary server and the model cache
# work whatever uid runs the container). Python 3.12 is
# Ubuntu 24.04's; CI tests 3.11 and 3.12 is within the project's supported range.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/trace \
    PREFECT_HOME=/home/trace/.prefect \
    HF_HOME=/home/trace/.cache/huggingface

# the CUDA base image fixes the OS release; its apt versions move with security updates, so they are
# not pinned (hadolint DL3008)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && useradd --create-home --uid 1000 trace \
    && chmod 1777 /home/trace

WORKDIR /app

# 1. dependencies only: pyproject.toml changes rarely, so this layer is reused across code edits
# (it installs the project itself, whose pins live in pyproject.toml: hadolint DL3013 does not apply)
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p trace_core trace_rl \
    && touch trace_core/__init__.py trace_rl/__init__.py \
    && pip install --upgrade pip==26.3 \
    && pip install '.[vllm,ray]' \
    && pip uninstall -y trace-rl

# 2. the code
COPY --chown=trace:trace . .
RUN pip install --no-deps . && chown -R trace:trace /app

USER 1000:1000
ENTRYPOINT ["trace-rl"]
CMD ["run"]
