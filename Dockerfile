# The coordinator, worker and beat image (docker-compose.yml builds it once, as flaas:0.1.0).
# Every dependency comes from PyPI through constraints.txt, as scripts/setup.sh installs them
# (.dockerignore keeps .venv, flaas-data/, .git and caches out of the context). PyPI's Linux
# torch wheel brings its CUDA libraries (GBs); for a CPU-only image, let pip see PyTorch's CPU
# wheels too (the constraint torch==2.13.0 accepts its 2.13.0+cpu):
#   docker compose build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY . .
RUN pip install -c constraints.txt ".[server]" && useradd --create-home flaas
USER flaas
