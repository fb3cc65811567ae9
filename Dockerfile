# pneumo serve in a container, the way SageMaker, Vertex AI, KServe and Kubernetes run one:
# `docker run IMAGE serve` listens on 0.0.0.0:8080 (or $SAGEMAKER_BIND_TO_PORT / $AIP_HTTP_PORT),
# see deploy/docker/entrypoint.sh. Two stages: the builder makes the wheel (the engine and the
# shipped model repository, no TensorFlow), the runtime installs it with the serve, dicom and
# postgres extras (replicas share one --database) and runs as a non-root user.
# Docker cannot run on the machines this project is developed on: this file was never built
# there. tests/test_deploy.py checks what it COPYs exists and builds the wheel from exactly
# those files.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY LICENSES ./LICENSES
COPY pneumo_onnx ./pneumo_onnx
COPY engine ./engine
COPY models ./models
COPY convert ./convert
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels /wheels
RUN pip install "$(ls /wheels/pneumo_onnx-*.whl)[serve,dicom,postgres]" && rm -rf /wheels \
    && useradd --create-home --uid 10001 pneumo
COPY deploy/docker/entrypoint.sh /usr/local/bin/pneumo-entrypoint
USER 10001
ENV HOME=/home/pneumo
WORKDIR /home/pneumo
RUN mkdir pneumo-state
VOLUME ["/home/pneumo/pneumo-state"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import os, urllib.request; port = os.environ.get('SAGEMAKER_BIND_TO_PORT') or os.environ.get('AIP_HTTP_PORT') or '8080'; urllib.request.urlopen(f'http://127.0.0.1:{port}/ping', timeout=4)" || exit 1
# API keys: pass PNEUMO_API_KEYS at run time, never bake them into the image.
ENTRYPOINT ["pneumo-entrypoint"]
CMD ["serve"]
