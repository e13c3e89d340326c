# syntax=docker/dockerfile:1
# The modeldeploy operator image: `docker build -t ghcr.io/modeldeploy/modeldeploy:0.1.0 .`
# Stage 1 builds wheels for the operator and its dependencies; stage 2 installs them into a
# clean slim image, so no compiler, build backend or source tree ends up in the runtime.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A named user for uid 65532 (the chart's runAsUser), so tools that look the user up work.
RUN groupadd --system --gid 65532 modeldeploy \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin modeldeploy
# Only the wheels built above: --no-index keeps the install from reaching any index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/modeldeploy-*.whl
USER 65532:65532
# kopf's liveness endpoint (/healthz). Kubernetes probes it itself (see the chart); this is
# for `docker run`.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["modeldeploy"]
CMD ["run"]
