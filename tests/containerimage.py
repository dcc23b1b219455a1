"""Building the weightgen container image with podman, offline, for the image and deployment tests.

No container registry is reachable from the CI machines, so the base image is made here from
Debian's archive (``debootstrap --variant=minbase bookworm`` plus Debian's python3, imported with
``podman import``) and the Dockerfile is built with ``--build-arg BASE_IMAGE=`` that base and
``--build-arg WHEELHOUSE=build/wheelhouse``: every dependency as a wheel built on this host (the
host's Python and Debian bookworm's are both 3.11), installed with no package index.

Reruns are fast: the base image stays in podman's store (and as a tarball under build/image/),
the wheelhouse is reused, and the image is rebuilt (about a minute) only when its sources changed
(a digest of them is a label of the image). Builds keep no intermediate layers and the image a
rebuild replaces is removed, so reruns do not pile up disk space. Everything starts from a clean
checkout.
Logs of the long steps go to build/image/*.log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
WORK = REPO / "build" / "image"
WHEELHOUSE = "build/wheelhouse"  # relative to the build context (the repository), see .dockerignore
BASE_IMAGE = "localhost/weightgen-base:bookworm"
BASE_TARBALL = WORK / "base-bookworm.tar"
IMAGE = "localhost/weightgen:test"
DEBIAN_MIRROR = os.environ.get("WEIGHTGEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_TOOLS = ("podman", "runc", "debootstrap")
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "proto", "server", "client")
"""What the image is built from (with the wheelhouse): see .dockerignore and the Dockerfile."""
SOURCE_LABEL = "weightgen.test.source-digest"


def env() -> dict[str, str]:
    """The environment for podman: the repository's containers.conf unless one is given."""
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}


def venv_tool(name: str) -> str | None:
    """A tool installed into this Python's environment (hadolint, kubectl, ...), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def missing_tools(tools: tuple[str, ...] = HOST_TOOLS) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def require_tools(tools: tuple[str, ...] = HOST_TOOLS) -> None:
    missing = missing_tools(tools)
    if missing:
        raise AssertionError(
            f"missing host tools {missing}: run deploy/podman/install-host-tools.sh as root "
            "(make test-image does), or install them with apt-get"
        )
    if os.geteuid() != 0:
        raise AssertionError("the image test runs rootful podman and debootstrap: run it as root")


def run(args: list[str], *, timeout: float = 600, log: Path | None = None, check: bool = True):
    """Run a command; on failure raise AssertionError with its output (or its log's tail)."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env(), timeout=timeout, check=False)
        output = log.read_text(errors="replace")[-6000:]
    else:
        proc = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, check=False)
        output = (proc.stdout + proc.stderr)[-6000:]
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {proc.returncode}:\n{output}")
    return proc


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(["podman", *args], timeout=timeout, check=check)


def image_id(name: str) -> str:
    proc = podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def inspect(name: str, kind: str = "image") -> dict:
    return json.loads(podman(kind, "inspect", name).stdout)[0]


def _step(message: str, started: float) -> None:
    print(f"[image] {message} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


def ensure_base_image() -> None:
    """localhost/weightgen-base:bookworm: from podman's store, the cached tarball, or debootstrap."""
    if image_id(BASE_IMAGE):
        return
    started = time.monotonic()
    if not BASE_TARBALL.exists():
        rootfs = WORK / "rootfs"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        WORK.mkdir(parents=True, exist_ok=True)
        run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), DEBIAN_MIRROR],
            timeout=1200,
            log=WORK / "debootstrap.log",
        )
        # Package caches, lists and documentation are no use in an image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != "lock":
                    entry.unlink()
        partial = BASE_TARBALL.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(BASE_TARBALL)
        shutil.rmtree(rootfs)
        _step(f"debootstrapped {BASE_TARBALL.relative_to(REPO)}", started)
    podman("import", "--change", 'CMD ["/bin/bash"]', str(BASE_TARBALL), BASE_IMAGE, timeout=600)
    _step(f"imported {BASE_IMAGE}", started)


def build_wheelhouse() -> None:
    """Wheels of weightgen[server]'s dependencies (and the build backend) for the offline build."""
    started = time.monotonic()
    wheelhouse = REPO / WHEELHOUSE
    wheelhouse.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse),
            "--find-links", str(wheelhouse), f"{REPO}[server]", "setuptools>=69", "wheel",
        ],
        timeout=900,
        log=WORK / "wheelhouse.log",
    )  # fmt: skip
    _step(f"wheelhouse {WHEELHOUSE}", started)


def source_digest() -> str:
    """A digest of everything the image is built from: the context's sources, the wheelhouse's
    wheels (by name and size) and the base image."""
    h = hashlib.sha256(image_id(BASE_IMAGE).encode())
    for top in CONTEXT:
        root = REPO / top
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                h.update(f"{path.relative_to(REPO)}\0{path.stat().st_size}\0".encode())
                h.update(path.read_bytes())
    for wheel in sorted((REPO / WHEELHOUSE).glob("*.whl")):
        if not wheel.name.startswith("weightgen-"):  # the project's own wheel is rebuilt each time, unused
            h.update(f"{wheel.name}\0{wheel.stat().st_size}\0".encode())
    return h.hexdigest()


def build_image() -> None:
    """podman build of the repository's Dockerfile, offline, tagged localhost/weightgen:test;
    skipped when the image was built from exactly the same sources (its label says)."""
    started = time.monotonic()
    previous = image_id(IMAGE)
    digest = source_digest()
    if previous and inspect(IMAGE).get("Labels", {}).get(SOURCE_LABEL) == digest:
        _step(f"{IMAGE} is up to date", started)
        return
    run(
        [
            "podman", "build", "--format", "docker",  # the docker format keeps HEALTHCHECK (OCI has none)
            "--layers=false",  # no intermediate images: each rebuild would otherwise keep ~650 MB
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"WHEELHOUSE={WHEELHOUSE}",
            "--label", f"{SOURCE_LABEL}={digest}",
            "--tag", IMAGE, "--file", str(REPO / "Dockerfile"), str(REPO),
        ],
        timeout=1800,
        log=WORK / "build.log",
    )  # fmt: skip
    current = image_id(IMAGE)
    if previous and previous != current:  # the replaced image would only take disk space
        podman("rmi", previous, check=False)
    _step(f"built {IMAGE}", started)


_built = False


def ensure_image() -> str:
    """Build (or rebuild, cheaply, from the caches) the image from the current sources."""
    global _built  # noqa: PLW0603 - once per test process
    require_tools()
    if not _built:
        ensure_base_image()
        build_wheelhouse()
        build_image()
        _built = True
    return IMAGE


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A container of ours, its gRPC and metrics ports published on loopback."""

    name: str
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict:
        return inspect(self.name, "container")["State"]

    def health(self, service: str = "") -> str:
        """The health service's answer for `service`, by name (SERVING, NOT_SERVING, ...)."""
        with grpc.insecure_channel(self.address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
