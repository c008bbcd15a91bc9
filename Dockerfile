# amseg API and worker image: `docker compose up` runs both (see docker-compose.yml).
# Multi-stage: build the virtual environment, then copy it into a slim runtime as non-root.
# The default image (the last stage) has PyTorch: training, fine-tuning, the GPU; CPU by
# default, the GPU worker builds with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
# `--target slim` leaves PyTorch out (the lean install): CPU prediction, registration and the
# API, on the OpenVINO IR shipped with the model (model/weights/default/openvino); no
# fine-tuning. BENCHMARKS.md, "Install size and cold start", compares the two.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app

FROM venv AS builder-slim
COPY pyproject.toml README.md alembic.ini ./
COPY model ./model
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
# Editable, so that alembic.ini and migrations/ stay where store.database looks for them.
RUN pip install --no-cache-dir -e .

FROM venv AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Torch first, from the CPU (or CUDA) index, so a CPU image carries no CUDA libraries.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md alembic.ini ./
COPY model ./model
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir -e '.[torch]'

FROM python:${PYTHON_VERSION}-slim-bookworm AS slim
RUN groupadd --system --gid 10001 amseg \
    && useradd --system --uid 10001 --gid amseg --create-home --home-dir /home/amseg amseg \
    && mkdir -p /data \
    && chown amseg:amseg /data
COPY --from=builder-slim /opt/venv /opt/venv
COPY --from=builder-slim /app /app
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    AMSEG_CACHE_DIR=/home/amseg/.cache/amseg
WORKDIR /app
USER 10001:10001
# Without torch the shipped IR is the only way to the network: refuse to build an image whose
# OpenVINO cannot load it.
RUN python -m model.segment.ir_tool check
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["amseg", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 amseg \
    && useradd --system --uid 10001 --gid amseg --create-home --home-dir /home/amseg amseg \
    && mkdir -p /data \
    && chown amseg:amseg /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    AMSEG_CACHE_DIR=/home/amseg/.cache/amseg
WORKDIR /app
USER 10001:10001
# The first task must not export or quantize: the shipped IR loads, or (an OpenVINO that
# cannot read it) the IR is made here, into the image's cache.
RUN python -m model.segment.ir_tool check || python -m model.segment.ir_tool prepare
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["amseg", "serve", "--host", "0.0.0.0", "--port", "8000"]
