# syntax=docker/dockerfile:1
# The shopdb-operator image: the operator itself and the `maintain` command its CronJobs run.
# Build: docker build -t shopdb/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY tests/constraints.txt ./constraints.txt
COPY operator/ operator/
# A wheel, not the source tree, with dependencies at the versions the tests ran with: the runtime image gets installed files only.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /venv \
 && /venv/bin/pip install --constraint constraints.txt /wheels/*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="shopdb-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# Same base as the build stage, so the venv's interpreter links stay valid.
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    USER=shopdb-operator
# Unprivileged and numeric, so runAsNonRoot can verify it without /etc/passwd (HOME is the
# writable /tmp, since the root filesystem is read-only in the pod; USER answers getpass).
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["shopdb-operator"]
CMD ["run", "--all-namespaces"]
