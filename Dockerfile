# GPU training image: CUDA runtime, the project with its vLLM extra, a non-root user, `trace-rl`
# as the entry point. Dependencies are installed before the code is copied, so a code change
# rebuilds only the last layers.
#   docker build -t trace-rl .
#   docker run --gpus all -v $PWD/runs:/app/runs trace-rl run
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && useradd --create-home --uid 1000 trace

WORKDIR /app

# 1. dependencies only: pyproject.toml changes rarely, so this layer is reused across code edits
COPY pyproject.toml README.md ./
RUN mkdir -p trace_core flows store \
    && touch trace_core/__init__.py flows/__init__.py store/__init__.py \
    && pip install --upgrade pip \
    && pip install '.[vllm]' \
    && pip uninstall -y trace-rl

# 2. the code
COPY --chown=trace:trace . .
RUN pip install --no-deps . && chown -R trace:trace /app

USER trace
ENTRYPOINT ["trace-rl"]
CMD ["run"]
