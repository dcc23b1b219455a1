"""The rendered CPU overlay, run by ``podman kube play``: the Deployment's pod starts from the image
built from this repository, with the manifest's securityContext, ConfigMap and emptyDirs, serves
through a loopback hostPort, serves the init container of examples/trainer-job (its command line
as rendered, run in a container beside the pod), and drains on SIGTERM.

Podman ignores gRPC probes (it runs only exec probes), so readiness and liveness are asked from the
host with grpc.health.v1 on the same service names the probes use. Other kinds (Services, PDB,
HPA, NetworkPolicy, ServiceMonitor, Namespace) are ignored by podman; tests/deploy/test_manifests.py
checks them.

Where podman (and root, for the offline image build) is missing this test is skipped with a loud
reason, unless WEIGHTGEN_REQUIRE_PODMAN=1 (as in .ci/run), where it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import containerimage as ci
import grpc
import pytest
import yaml
from deployrender import DEPLOY, documents, render, rendered
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

pytestmark = pytest.mark.timeout(1800)  # may build the image first

READY_TIMEOUT = 300.0
STOP_TIMEOUT = 60


def _podman_usable() -> str:
    """'' when podman can run the pod here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    if os.geteuid() != 0:
        return "not root (the offline image build needs root for debootstrap and rootful podman)"
    missing = ci.missing_tools()
    return f"missing {missing}" if missing else ""


@pytest.fixture(scope="module")
def image() -> str:
    why = _podman_usable()
    if why:
        message = f"podman kube play of the CPU overlay NOT RUN: {why} (deploy/podman/install-host-tools.sh)"
        if os.environ.get("WEIGHTGEN_REQUIRE_PODMAN") == "1":
            pytest.fail(message + "; WEIGHTGEN_REQUIRE_PODMAN=1 requires it")
        print(f"WARNING: {message}")
        pytest.skip(message)
    return ci.ensure_image()


def play_overlay(image: str, port: int, metrics_port: int) -> str:
    """A kustomization over deploy/overlays/cpu for this machine; returns the rendered YAML.

    The only changes: the locally built image (never pulled), one replica, loopback hostPorts for
    the two container ports, and one JAX device per core of this machine."""
    work = ci.REPO / "build" / "kube-play"
    work.mkdir(parents=True, exist_ok=True)
    name, tag = image.rsplit(":", 1)
    base = "../../deploy/overlays/cpu"  # kustomize wants a relative path
    assert (work / base).resolve() == (DEPLOY / "overlays" / "cpu").resolve()
    devices = min(4, os.cpu_count() or 1)
    patch = [
        {"op": "add", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
    ]
    for index, host_port in ((0, port), (1, metrics_port)):
        patch += [
            {"op": "add", "path": f"/spec/template/spec/containers/0/ports/{index}/hostPort", "value": host_port},
            {"op": "add", "path": f"/spec/template/spec/containers/0/ports/{index}/hostIP", "value": "127.0.0.1"},
        ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "images": [{"name": "registry.example.com/weightgen", "newName": name, "newTag": tag}],
        "configMapGenerator": [
            {"name": "weightgen-config", "behavior": "merge", "literals": [f"WEIGHTGEN_DEVICES={devices}"]}
        ],
        "patches": [{"target": {"kind": "Deployment", "name": "weightgen"}, "patch": yaml.safe_dump(patch)}],
    }
    (work / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    text = render(work)
    (work / "rendered.yaml").write_text(text)
    return text


@dataclass
class Played(ci.Running):
    """The rendered CPU Deployment's pod, run by podman kube play; `name` is its container."""

    deployment: dict | None = None
    pod: str = ""


@pytest.fixture(scope="module")
def played(image) -> Iterator[Played]:
    """The CPU overlay's pod, played once for the tests of this module (which run in order)."""
    port, metrics_port = ci.free_port(), ci.free_port()
    text = play_overlay(image, port, metrics_port)
    path = ci.REPO / "build" / "kube-play" / "rendered.yaml"
    proc = ci.podman("kube", "play", "--replace", str(path), timeout=300)
    lines = proc.stdout.split()
    containers = lines[lines.index("Container:") + 1 :] if "Container:" in lines else []
    pods = lines[lines.index("Pod:") + 1 : lines.index("Container:")] if "Container:" in lines else []
    try:
        assert len(pods) == len(containers) == 1, f"expected one pod of one container:\n{proc.stdout}{proc.stderr}"
        deployment = next(d for d in documents(text) if d["kind"] == "Deployment")
        yield Played(containers[0], port, metrics_port, deployment=deployment, pod=pods[0])
    finally:
        ci.podman("kube", "down", str(path), timeout=120, check=False)


def test_pod_runs_as_the_manifest_says_and_serves(played):
    print("podman ignores gRPC probes: readiness and liveness are checked from the host instead")
    inspected = ci.inspect(played.name, "container")
    manifest = played.deployment["spec"]["template"]["spec"]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["Config"]["User"].split(":")[0] == str(manifest["securityContext"]["runAsUser"])
    assert not inspected["HostConfig"].get("CapAdd")
    mounts = {m["Destination"] for m in inspected["Mounts"]}
    assert {"/var/cache/weightgen", "/tmp"} <= mounts

    # What the probes would see: unready but alive while warming, then ready (startupProbe).
    started = time.monotonic()
    while True:
        try:
            if played.health("weightgen.v1.WeightGen") == "SERVING":
                break
        except grpc.RpcError:
            pass
        state = played.state()
        assert state["Running"], f"exited with {state['ExitCode']}:\n{played.logs()[-6000:]}"
        assert time.monotonic() - started < READY_TIMEOUT, f"not ready:\n{played.logs()[-6000:]}"
        time.sleep(0.5)
    print(f"ready after {time.monotonic() - started:.1f} s")
    assert played.health("weightgen.liveness") == "SERVING"

    # The service answers a Materialize through the hostPort, and /metrics through the other.
    request = pb.MaterializeRequest(
        seed=7, variables=[pb.VariableSpec(name="w", shape=[64, 32], initializer=pb.Initializer(he=pb.He()))]
    )
    with grpc.insecure_channel(played.address) as channel:
        chunks = list(weightgen_pb2_grpc.WeightGenStub(channel).Materialize(request, timeout=60))
    data = b"".join(c.data for c in chunks)
    assert len(data) == 64 * 32 * 4 and chunks[-1].digest == hashlib.sha256(data).digest()
    with urllib.request.urlopen(f"http://127.0.0.1:{played.metrics_port}/metrics", timeout=10) as r:
        assert "weightgen_ready 1.0" in r.read().decode()


def test_trainer_init_container_fetches_from_the_pod(played, image, tmp_path):
    """examples/trainer-job's init container as rendered (command line, user, read-only root, its
    volumes as host directories), run in the server's pod: only the Service's DNS name becomes the
    pod's loopback address."""
    docs = rendered("examples/trainer-job")
    spec = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    command = [*init["command"], *init.get("args", [])]
    command[command.index("--server") + 1] = "127.0.0.1:50051"
    spec_file, output = Path(command[2]), Path(command[command.index("--output") + 1])

    # Each volume of the init container as a host directory: the ConfigMap's files, the emptyDir.
    volumes = {v["name"]: v for v in spec["volumes"]}
    host: dict[str, Path] = {}
    arguments = []
    for mount in init["volumeMounts"]:
        directory = host[mount["mountPath"]] = tmp_path / mount["name"]
        directory.mkdir()
        source = volumes[mount["name"]]
        if "configMap" in source:
            config_map = next(
                d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMap"]["name"]
            )
            for key, value in config_map["data"].items():
                (directory / key).write_text(value)
        else:
            assert "emptyDir" in source
            directory.chmod(0o777)  # writable by the pod's user, as an emptyDir with fsGroup is
        arguments.append(f"--volume={directory}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else ""))
    user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    proc = ci.podman(
        "run", "--rm", f"--pod={played.pod}", "--read-only", "--cap-drop=ALL",
        f"--user={user}", *arguments, f"--entrypoint={command[0]}", image, *command[1:],
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command}: {proc.returncode}\n{proc.stdout}{proc.stderr}"

    # The file the trainer would read holds exactly the tensors the service streams for the spec.
    from safetensors.numpy import load_file

    tensors = load_file(str(host[str(output.parent)] / output.name))
    request = json_format.Parse((host[str(spec_file.parent)] / spec_file.name).read_text(), pb.MaterializeRequest())
    assert sorted(tensors) == sorted(v.name for v in request.variables)
    streamed: dict[int, bytearray] = {}
    with grpc.insecure_channel(played.address) as channel:
        for chunk in weightgen_pb2_grpc.WeightGenStub(channel).Materialize(request, timeout=60):
            streamed.setdefault(chunk.variable_index, bytearray()).extend(chunk.data)
    for i, variable in enumerate(request.variables):
        array = tensors[variable.name]
        assert list(array.shape) == list(variable.shape), variable.name
        assert array.tobytes() == bytes(streamed[i]), f"{variable.name}: the file differs from the stream"


def test_sigterm_drains_and_exits_zero(played):
    """SIGTERM (podman stop, within the pod's grace period): drained and exited 0."""
    ci.podman("stop", "--time", str(STOP_TIMEOUT), played.name, timeout=STOP_TIMEOUT + 30)
    state = played.state()
    text = played.logs()
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{text[-6000:]}"
    messages = [json.loads(line).get("msg") for line in text.splitlines() if line.startswith("{")]
    assert "draining" in messages and "stopped" in messages, text[-6000:]
