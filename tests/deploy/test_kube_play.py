"""The rendered CPU overlay, run by ``podman kube play``: the Deployment's pod starts from the image
built from this repository, with the manifest's securityContext, ConfigMap, emptyDirs and session
key Secret (from deploy/session-keys.example, as in tests/deploy/deploytree.py), serves through a
loopback hostPort, serves the init container of examples/trainer-job (its command line as rendered,
run in a container beside the pod), keeps its sessions across a restart (the key comes from the
Secret, not from the process), and drains on SIGTERM.

Podman ignores gRPC probes (it runs only exec probes), so readiness and liveness are asked from the
host with grpc.health.v1 on the same service names the probes use. Other kinds (Services, PDB,
HPA, NetworkPolicy, ServiceMonitor, Namespace) are ignored by podman; tests/deploy/test_manifests.py
checks them. Podman plays the Secret (as a podman secret and a volume named after it), but ignores
its volume's defaultMode (test_manifests.py checks the permissions), and podman 4.3 (Debian 12)
writes each data value still base64-encoded: the file then holds one line, the base64 of the key
file, itself a valid key, so the server still starts and signs with one key. The played YAML keeps
each base64 value on one line for that reason (kustomize wraps them at 70 characters).

Where podman (and root, for the offline image build) is missing this test is skipped with a loud
reason, unless WEIGHTGEN_REQUIRE_PODMAN=1 (as in .ci/run), where it fails instead.
"""

from __future__ import annotations

import base64
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
from deployrender import documents, render
from deploytree import EXAMPLE_KEYS, rendered, tree
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import weightgen_pb2_grpc

pytestmark = pytest.mark.timeout(1800)  # may build the image first

READY_TIMEOUT = 300.0
STOP_TIMEOUT = 60
SESSION_KEYS_SETTING = "WEIGHTGEN_SESSION_KEYS_FILE"


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
    """A kustomization over deploy/overlays/cpu (in the tests' copy of deploy/, with the example
    session key file) for this machine; returns the rendered YAML.

    The only changes: the locally built image (never pulled), one replica, loopback hostPorts for
    the two container ports, and one JAX device per core of this machine."""
    work = tree().parent / "kube-play"
    work.mkdir(parents=True, exist_ok=True)
    name, tag = image.rsplit(":", 1)
    base = "../deploy/overlays/cpu"  # kustomize wants a relative path
    assert (work / base).resolve() == (tree() / "overlays" / "cpu").resolve()
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
    # The same documents, with every Secret data value on one line (see the module docstring).
    text = yaml.safe_dump_all(documents(render(work)), sort_keys=False, width=1 << 20)
    (work / "rendered.yaml").write_text(text)
    return text


@dataclass
class Played(ci.Running):
    """The rendered CPU Deployment's pod, run by podman kube play; `name` is its container."""

    deployment: dict | None = None
    pod: str = ""
    secret: dict | None = None
    config: dict | None = None

    def wait_ready(self) -> float:
        """What the probes would see: unready but alive while warming, then ready (startupProbe);
        returns the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                if self.health("weightgen.v1.WeightGen") == "SERVING":
                    break
            except grpc.RpcError:
                pass
            state = self.state()
            assert state["Running"], f"exited with {state['ExitCode']}:\n{self.logs()[-6000:]}"
            assert time.monotonic() - started < READY_TIMEOUT, f"not ready:\n{self.logs()[-6000:]}"
            time.sleep(0.5)
        assert self.health("weightgen.liveness") == "SERVING"
        return time.monotonic() - started


def remove_secret(name: str) -> None:
    """The podman secret and volume that kube play makes from a Secret (kube down leaves them)."""
    ci.podman("secret", "rm", name, timeout=60, check=False)
    ci.podman("volume", "rm", "--force", name, timeout=60, check=False)


@pytest.fixture(scope="module")
def played(image) -> Iterator[Played]:
    """The CPU overlay's pod, played once for the tests of this module (which run in order)."""
    port, metrics_port = ci.free_port(), ci.free_port()
    text = play_overlay(image, port, metrics_port)
    path = tree().parent / "kube-play" / "rendered.yaml"
    docs = documents(text)
    secret = next(d for d in docs if d["kind"] == "Secret")
    remove_secret(secret["metadata"]["name"])  # left by an interrupted run
    proc = ci.podman("kube", "play", "--replace", str(path), timeout=300)
    lines = proc.stdout.split()
    containers = lines[lines.index("Container:") + 1 :] if "Container:" in lines else []
    pods = lines[lines.index("Pod:") + 1 : lines.index("Container:")] if "Container:" in lines else []
    try:
        assert len(pods) == len(containers) == 1, f"expected one pod of one container:\n{proc.stdout}{proc.stderr}"
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
        yield Played(
            containers[0], port, metrics_port, deployment=deployment, pod=pods[0], secret=secret, config=config
        )
    finally:
        ci.podman("kube", "down", str(path), timeout=120, check=False)
        remove_secret(secret["metadata"]["name"])


def test_pod_runs_as_the_manifest_says_and_serves(played):
    print("podman ignores gRPC probes: readiness and liveness are checked from the host instead")
    inspected = ci.inspect(played.name, "container")
    manifest = played.deployment["spec"]["template"]["spec"]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["Config"]["User"].split(":")[0] == str(manifest["securityContext"]["runAsUser"])
    assert not inspected["HostConfig"].get("CapAdd")
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    assert {"/var/cache/weightgen", "/tmp"} <= set(mounts)
    keys_dir = str(Path(played.config[SESSION_KEYS_SETTING]).parent)
    assert keys_dir in mounts and mounts[keys_dir]["RW"] is False, "the session keys are not mounted read-only"

    print(f"ready after {played.wait_ready():.1f} s")

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


def materialize(played: Played, request: pb.MaterializeRequest) -> bytes:
    with grpc.insecure_channel(played.address) as channel:
        chunks = list(weightgen_pb2_grpc.WeightGenStub(channel).Materialize(request, timeout=60))
    return b"".join(c.data for c in chunks)


def test_sessions_survive_a_restart(played):
    """The server signs sessions with the key from the Secret (not a random key of its process), so
    a session opened before a restart is served after it, as any replica sharing the Secret would."""
    # The Secret's file, as the server reads it: the example key file (a podman that decodes the
    # data) or, with podman 4.3, one line holding its base64.
    path = played.config[SESSION_KEYS_SETTING]
    inside = ci.podman("exec", played.name, "cat", path).stdout
    example = EXAMPLE_KEYS.read_text()
    assert inside in (example, base64.b64encode(example.encode()).decode()), inside
    assert "no --session-keys-file" not in played.logs(), "the server did not get the key file"

    variables = [pb.VariableSpec(name="w", shape=[64, 32], initializer=pb.Initializer(he=pb.He()))]
    with grpc.insecure_channel(played.address) as channel:
        stub = weightgen_pb2_grpc.WeightGenStub(channel)
        by_name = stub.OpenSession(pb.OpenSessionRequest(seed=11), timeout=30).session_id
        sequential = stub.OpenSession(
            pb.OpenSessionRequest(seed=12, rng_mode=pb.RNG_MODE_SEQUENTIAL), timeout=30
        ).session_id
    before = materialize(played, pb.MaterializeRequest(session_id=by_name, variables=variables))
    before_sequential = materialize(
        played, pb.MaterializeRequest(session_id=sequential, variables=variables, sequence_start=0)
    )

    # The pod, not the container: kube play's pods have exit policy "stop", so once their only
    # container exits, podman stops the infra container too (asynchronously), and a container
    # restart then races with it ("cannot get namespace path ... container is stopped").
    ci.podman("pod", "stop", "--time", str(STOP_TIMEOUT), played.pod, timeout=STOP_TIMEOUT + 30)
    ci.podman("pod", "start", played.pod, timeout=60)
    print(f"ready again after {played.wait_ready():.1f} s")
    assert materialize(played, pb.MaterializeRequest(session_id=by_name, variables=variables)) == before
    after_sequential = materialize(
        played, pb.MaterializeRequest(session_id=sequential, variables=variables, sequence_start=0)
    )
    assert after_sequential == before_sequential
    # Without sequence_start a sequential session needs the process that opened it.
    with pytest.raises(grpc.RpcError) as failed:
        materialize(played, pb.MaterializeRequest(session_id=sequential, variables=variables))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failed.value


def test_sigterm_drains_and_exits_zero(played):
    """SIGTERM (podman stop, within the pod's grace period): drained and exited 0."""
    ci.podman("stop", "--time", str(STOP_TIMEOUT), played.name, timeout=STOP_TIMEOUT + 30)
    state = played.state()
    text = played.logs()
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{text[-6000:]}"
    messages = [json.loads(line).get("msg") for line in text.splitlines() if line.startswith("{")]
    assert "draining" in messages and "stopped" in messages, text[-6000:]
