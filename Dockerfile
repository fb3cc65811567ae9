# pneumo serve in a container: the TensorFlow-free engine + the serve extra, non-root.
# Docker cannot run on the machines this project is developed on: this file is written with
# care but was never built here (see README, "Serve").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 pneumo
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY LICENSES ./LICENSES
COPY pneumo_onnx ./pneumo_onnx
COPY engine ./engine
COPY models ./models
COPY convert ./convert
RUN pip install '.[serve]' && rm -rf /app/engine /app/models /app/convert /app/pneumo_onnx

USER pneumo
WORKDIR /home/pneumo
VOLUME ["/home/pneumo/pneumo-state"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)" || exit 1
# API keys: pass PNEUMO_API_KEYS at run time, never bake them into the image.
CMD ["pneumo", "serve", "--host", "0.0.0.0", "--port", "8000", "--state-dir", "/home/pneumo/pneumo-state"]
