# One image for the three Lotgate services; the process is chosen by the command:
#   python -m services.suppliers | python -m services.lots | python -m services.results
# Build from the repository root:  docker build -t ghcr.io/lotgate/lotgate:0.1.0 .

# The base image by digest, the tag beside it for people. sha256:9c900dea... is the
# multi-arch index of docker.io/library/python:3.11-slim (3.11.16-slim) as public
# Dockerfiles pin it and a public `docker build` log resolved it; it was found by searching
# public code, as the machines that wrote this file reach no registry. Before a release,
# confirm it (`docker buildx imagetools inspect python:3.11-slim`) and move it on purpose.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- build: install the package and its dependencies into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependencies exactly as locked, every file checked against its hash (`make lock`
# regenerates requirements/*.txt from pyproject.toml); nothing is resolved here.
COPY requirements/lock.txt requirements/build-lock.txt requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/lock.txt \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements/build-lock.txt
COPY . .
# Lotgate's own wheel, built with the locked setuptools in a venv of its own, then
# installed without its dependencies: the runtime stage copies /opt/venv only.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/dist . \
 && pip install --no-cache-dir --no-deps /tmp/dist/lotgate-*.whl

# --- runtime: the virtualenv, a non-root user, nothing else -------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="lotgate" \
      org.opencontainers.image.description="Lotgate gRPC services (suppliers, lots, results)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 lotgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin lotgate

COPY --from=build /opt/venv /opt/venv
# gRPC health check used by deploy/compose.yaml (Kubernetes uses native grpc probes).
COPY deploy/grpc_health_check.py /opt/lotgate/grpc_health_check.py

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    LOTGATE_GRPC_HOST=0.0.0.0 \
    LOTGATE_LOG_LEVEL=info

# A root-owned, read-only working directory; PYTHONSAFEPATH keeps it off sys.path.
# Nothing is written to disk when LOTGATE_DATABASE_URL points at PostgreSQL, so the
# root filesystem can be mounted read-only (give the process a writable /tmp).
WORKDIR /opt/lotgate
USER 10001:10001

EXPOSE 50061 50062 50063

# Compose and Kubernetes always set the command explicitly; this is only the default.
CMD ["python", "-m", "services.suppliers"]
