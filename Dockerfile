# syntax=docker/dockerfile:1
# The weightgen server image.
#
#   CPU image:   docker build -t weightgen:0.1.0 .
#   CUDA image:  docker build --build-arg JAX_EXTRA=cuda12 -t weightgen:0.1.0-cuda .
#                (JAX's CUDA wheels bring CUDA and cuDNN; the host's NVIDIA driver comes in
#                through the NVIDIA Container Toolkit. On an nvidia/cuda base that carries
#                CUDA, cuDNN and a python3 with venv, use JAX_EXTRA=cuda12-local instead.)
#   Offline:     docker build --build-arg BASE_IMAGE=<image with python3 + venv>
#                  --build-arg WHEELHOUSE=build/wheelhouse .
#                (every dependency as a wheel in that directory of the build context, no index;
#                this is how `make test-image` builds without a registry.)
#
# Configuration is by WEIGHTGEN_* environment variables (python -m weightgen.server --help lists
# them). The server is PID 1: SIGTERM makes it report NOT_SERVING, refuse new streams, let
# in-flight ones finish within WEIGHTGEN_GRACE_SECONDS and exit 0.

# Any image with python3 (>= 3.10, with the venv module) at the same path in both stages.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# "" (CPU), "cuda12" or "cuda13" (JAX's CUDA wheels), "cuda12-local" (the base image's CUDA).
ARG JAX_EXTRA=""
# A directory of the build context holding wheels of every dependency; "" = use the package index.
ARG WHEELHOUSE=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY server/ server/
COPY client/ client/
# The context is mounted (not copied) so the wheelhouse never lands in a layer; .dockerignore
# keeps it down to the sources and build/wheelhouse. Nothing of pip, setuptools or the test
# suites of numpy and scipy is needed at run time.
RUN --mount=type=bind,target=/context \
    set -eu; \
    if [ -n "$WHEELHOUSE" ]; then set -- --no-index --find-links "/context/$WHEELHOUSE"; else set --; fi; \
    if [ -n "$JAX_EXTRA" ]; then set -- "$@" "jax[$JAX_EXTRA]"; fi; \
    python3 -m venv /opt/weightgen; \
    /opt/weightgen/bin/pip install "$@" "/src[server]"; \
    /opt/weightgen/bin/pip uninstall --yes pip setuptools wheel; \
    find /opt/weightgen/lib \( -path '*/site-packages/numpy/*' -o -path '*/site-packages/scipy/*' \) \
      -type d -name tests -prune -exec rm -rf {} +; \
    /opt/weightgen/bin/python -c "import weightgen.server.service, weightgen.server.healthcheck"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="weightgen" \
      org.opencontainers.image.description="gRPC service that materialises neural-network initial weights" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID, so Kubernetes can check runAsNonRoot with runAsUser: 10001.
RUN groupadd --gid 10001 weightgen \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin weightgen \
 && mkdir -p /var/cache/weightgen \
 && chown 10001:10001 /var/cache/weightgen
COPY --from=builder /opt/weightgen /opt/weightgen
# MALLOC_*: keep multi-MiB chunk buffers in the heap (DESIGN.md section 5; the server also calls
# mallopt). The compilation cache dir must be writable: Kubernetes mounts an emptyDir there.
ENV PATH=/opt/weightgen/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    WEIGHTGEN_HOST=0.0.0.0 \
    WEIGHTGEN_PORT=50051 \
    WEIGHTGEN_METRICS_PORT=9090 \
    WEIGHTGEN_COMPILATION_CACHE_DIR=/var/cache/weightgen \
    WEIGHTGEN_LOG_FORMAT=json
USER 10001:10001
# gRPC (WeightGen, health, reflection) and Prometheus /metrics.
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
# Readiness as Docker sees it: SERVING once the kernels are warm, not while draining. The probe is
# python + grpc only (no JAX import), so it takes a fraction of a second.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-m", "weightgen.server.healthcheck", "--timeout", "4"]
ENTRYPOINT ["python", "-m", "weightgen.server"]
