# patrol's container image: one image, two services (`patrol exporter`, `patrol worker`).
#
# Two stages: the builder installs the project and its dependencies into a virtualenv at
# /opt/venv; the final stage copies only that venv onto the same slim base, so no compiler,
# build backend, pip cache or source tree ships. Both stages use the same base tag, because the
# venv's interpreter is a symlink to the base image's /usr/local/bin/python3.11.
#
#   docker build -t patrol:0.1.0 --build-arg REVISION="$(git rev-parse --short HEAD)" .
#   docker run --rm patrol:0.1.0 config check /etc/patrol/patrol.yaml
#
# The HEALTHCHECK probes the exporter's /healthz (port 9877). A worker container overrides the
# URL: `docker run -e PATROL_HEALTHCHECK_URL=http://127.0.0.1:9878/healthz patrol:0.1.0 worker ...`
# (or `healthcheck:` in compose). Kubernetes ignores HEALTHCHECK and uses the probes in deploy/.

# The base, by tag (what it is) and digest (exactly which build: a tag moves when Docker
# rebuilds it). The digest is the multi-platform index of python:3.11.13-slim-bookworm. To move
# on: `docker buildx imagetools inspect python:3.11.N-slim-bookworm` prints the new digest
# (the "Digest:" line); change both together and rebuild. Checked on 2026-12-03 without Docker
# Hub (unreachable from the build machine): eight unrelated public Dockerfiles pin this same
# tag to this same digest, one naming it the multi-platform manifest digest.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the build needs (see .dockerignore): metadata and the lock first, then the packages.
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY patrol/ patrol/
COPY core/ core/
COPY exporter/ exporter/
COPY remediation/ remediation/
COPY sandbox/ sandbox/
# The revision `patrol --version` and patrol_build_info report (core/build.py): an image has no
# .git to ask, so it is written into the package now. Only a commit-like value is accepted.
ARG REVISION=unknown
RUN case "${REVISION}" in *[!0-9A-Za-z._-]*|"") echo "REVISION must be a commit id" >&2; exit 1;; esac \
    && printf 'REVISION = "%s"\n' "${REVISION}" > core/_build.py
# A regular (non-editable) install at exactly the versions the tests ran with (constraints.txt,
# written by `make lock` from the tested venv); pip compiles the bytecode now, because the
# running container has a read-only root filesystem and could not write it later.
RUN pip install --no-cache-dir -c constraints.txt . \
    && patrol --version


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="patrol" \
      org.opencontainers.image.description="Watches the Azure DevOps PATs that keep self-hosted agents alive, exports Prometheus metrics, and rotates them when an alert fires" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}" \
      org.opencontainers.image.documentation="deploy/README.md and docs/ in the source tree"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATROL_HEALTHCHECK_URL=http://127.0.0.1:9877/healthz

# uid/gid 10001: above any host's system range, and numeric in USER so Kubernetes'
# runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 patrol \
    && useradd --system --uid 10001 --gid patrol --home-dir /home/patrol --create-home \
               --shell /usr/sbin/nologin patrol \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/patrol

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/patrol

# 9877: exporter (/metrics, /healthz, /readyz); 9878: worker (Alertmanager webhook, /metrics, ...)
EXPOSE 9877 9878

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PATROL_HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["patrol"]
CMD ["--help"]
