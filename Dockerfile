# The asyncmq-otel image used by docker-compose.yml for the demo producer, the workers and the exporter.
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the wheel needs, so edits to tests or docs do not invalidate the install layer.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY asyncmq_otel ./asyncmq_otel
RUN pip install ".[redis,otlp]" && rm -rf /build

# Jobs run user code: never as root.
RUN useradd --create-home --uid 10001 asyncmq
USER asyncmq
WORKDIR /home/asyncmq

CMD ["asyncmq-otel", "--help"]
