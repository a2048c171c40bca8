"""deploy/kubernetes: every manifest is valid against Kubernetes' own schemas (offline, strict),
the pieces agree with each other (sizes, ports, labels, Secret keys, probes), and the sidecar
container, started with its args and env as written, answers its probes and stops cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"  # native sidecars (restartPolicy in initContainers) are on since 1.29
DRAIN_SECONDS = 10.0  # --shutdown-drain-seconds' default
WATCHDOG_GRACE_SECONDS = 20.0  # what the server allows itself after the drain

# The part of prometheus-operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the manifest
# uses; unknown fields are refused, so a misspelt one fails here rather than in the cluster.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "authorization": {"type": "object"},
                            "bearerTokenSecret": {"type": "object"},
                            "tlsConfig": {"type": "object"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]


def sidecar() -> dict[str, Any]:
    (container,) = [c for c in pod()["initContainers"] if c["name"] == "lmcache-server"]
    return container


def gib(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", quantity)
    assert match, quantity
    return float(match.group(1)) / (1 if match.group(2) == "Gi" else 1024)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[f"{n}:{d['kind']}:{d['metadata']['name']}" for n, d in manifests()])
def test_every_manifest_is_valid_against_its_schema(name: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_catches_a_misspelt_field() -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(one("Deployment")))
    broken["spec"]["template"]["spec"]["initContainers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    monitor = json.loads(json.dumps(one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["pth"] = "/metrics"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml"))
    assert sorted(listed) == expected


# ------------------------------------------------------------------------------ consistency


def test_dev_shm_is_memory_backed_shared_and_sized_from_the_l1_size() -> None:
    spec = pod()
    (dshm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    l1_gib = float(env_of(sidecar())["LMCACHE_L1_SIZE_GB"])
    assert "--l1-size-gb" not in " ".join(sidecar()["args"])  # one place to change it
    assert gib(dshm["emptyDir"]["sizeLimit"]) >= l1_gib + 2
    assert gib(sidecar()["resources"]["limits"]["memory"]) >= l1_gib + 2  # tmpfs pages are charged to it
    for container in [sidecar(), *spec["containers"]]:
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"], container["name"]
    # One uid for both: the segment is created mode 0600.
    assert spec["securityContext"]["runAsUser"] and not any("runAsUser" in c.get("securityContext", {}) for c in [sidecar(), *spec["containers"]])


def test_the_sidecar_starts_first_takes_its_tokens_from_the_secret_and_probes_the_right_routes() -> None:
    container = sidecar()
    assert container["restartPolicy"] == "Always"  # a native sidecar: up before vLLM, down after it
    env = env_of(container)
    secret = one("Secret", "lmcache-tokens")
    for var, key in (("LMCACHE_ADMIN_TOKEN", "admin-token"), ("LMCACHE_READ_TOKEN", "read-token")):
        assert env[var] == {"secretKeyRef": {"name": "lmcache-tokens", "key": key}}
        assert key in secret["stringData"]
    admin = {p["name"]: p["containerPort"] for p in container["ports"]}["admin"]
    assert f"--http-port={admin}" in container["args"] and "--http-host=0.0.0.0" in container["args"]
    assert "--host=127.0.0.1" in container["args"]  # the data path never leaves the pod
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthcheck", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthcheck", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert pod()["terminationGracePeriodSeconds"] > DRAIN_SECONDS + WATCHDOG_GRACE_SECONDS
    (vllm,) = pod()["containers"]
    transfer = next(a for a in vllm["args"] if a.startswith("--kv-transfer-config="))
    config = json.loads(transfer.split("=", 1)[1])
    assert config["kv_connector"] == "LMCacheMPConnector"
    port = next(a for a in container["args"] if a.startswith("--port=")).split("=")[1]
    assert config["kv_connector_extra_config"]["lmcache.mp.server_urls"] == f"tcp://127.0.0.1:{port}"


def test_service_monitor_and_network_policy_reach_the_admin_port() -> None:
    admin_service = one("Service", "lmcache-admin")
    monitor = one("ServiceMonitor")
    labels = admin_service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in admin_service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    template_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in (admin_service, one("Service", "vllm")):
        assert all(template_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    ports = {p["name"] for c in [sidecar(), *pod()["containers"]] for p in c["ports"]}
    policy = one("NetworkPolicy")
    assert all(template_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    named = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert named <= ports and "admin" in named


# ------------------------------------------------------------------------------ the container, run

_RUNNER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time, urllib.error, urllib.request
    args, env, read_token = json.loads(sys.argv[1])
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    out = {}

    def get(path, token=None):
        req = urllib.request.Request("http://127.0.0.1:8080" + path)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return None, str(e)

    # A stdlib-only script in the pod's namespaces: it reports what it saw, and the test asserts.
    deadline = time.monotonic() + 120
    while get("/healthcheck")[0] != 200 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    out["healthcheck"] = get("/healthcheck")
    out["readyz"] = get("/readyz")
    out["status_without_token"] = get("/status")[0]
    out["status"] = get("/status", read_token)
    out["metrics"] = get("/metrics")[0]
    out["shm_before"] = sorted(os.listdir("/dev/shm"))
    proc.send_signal(signal.SIGTERM)
    try:
        out["exit"] = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out["exit"] = "hung"
    out["stderr"] = proc.stderr.read()
    out["shm_after"] = sorted(os.listdir("/dev/shm"))
    print(json.dumps(out))
    """
)


def _namespaces_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private network and mount namespace (the pod's own ports and /dev/shm)"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare (util-linux) and ip (iproute2)"
    return None


@pytest.mark.timeout(180)
def test_the_sidecar_as_written_answers_its_probes_and_stops_cleanly(tmp_path: Path) -> None:
    """The container's command, args and env from deployment.yaml, in a network namespace of its
    own (the pod's: its ports as written, free) with a fresh tmpfs on /dev/shm of the dshm
    volume's sizeLimit. Two values differ from a cluster, both said here: the Secret's tokens
    are test values, and LMCACHE_L1_SIZE_GB is 64 MiB instead of 16 GiB (a shared test machine)."""
    missing = _namespaces_available()
    if missing:
        pytest.skip(missing)
    container = sidecar()
    (dshm,) = [v for v in pod()["volumes"] if v["name"] == "dshm"]
    tokens = {"admin-token": "deploy-test-admin-token-0123456789", "read-token": "deploy-test-read-token-0123456789"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = tokens[item["valueFrom"]["secretKeyRef"]["key"]]
    env["LMCACHE_L1_SIZE_GB"] = "0.0625"
    command = [shutil.which(container["command"][0]) or str(Path(sys.executable).with_name(container["command"][0]))]
    payload = json.dumps([command + container["args"], env, tokens["read-token"]])
    size = dshm["emptyDir"]["sizeLimit"].replace("Gi", "g").replace("Mi", "m")
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    shell = f"mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && ip link set lo up && exec {sys.executable} {script} \"$1\""
    done = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", shell, "runner", payload],
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["healthcheck"][0] == 200 and json.loads(out["healthcheck"][1]) == {"status": "healthy"}, out
    assert out["readyz"][0] == 200 and json.loads(out["readyz"][1])["ready"] is True, out["readyz"]
    assert out["status_without_token"] == 401  # the admin API is exposed, so it asks for the token
    assert out["status"][0] == 200 and json.loads(out["status"][1])["is_healthy"] is True
    assert out["metrics"] == 200  # Prometheus scrapes without a token
    shm_name = "lmcache_l1_pool_" + next(a for a in container["args"] if a.startswith("--shm-name=")).split("=")[1]
    assert shm_name in out["shm_before"]
    assert out["exit"] == 0, out["stderr"][-2000:]
    assert out["shm_after"] == [], out["shm_after"]
    assert "SECURITY" not in out["stderr"]
