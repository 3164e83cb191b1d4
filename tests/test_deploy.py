"""deploy/k8s: every object valid against the Kubernetes API schemas (offline, `kubernetes-validate`),
and the objects agreeing with each other, with the image BentoML builds and with the service.

Playing them for real needs podman and minutes of image build: `make deploy-check`
(benchmarks/deploy_check.py), whose figures docs/benchmarks.md shows.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from bentoml._internal.bento.build_config import BentoBuildConfig
from bentoml._internal.container.generate import BENTO_UID_GID
from bentoml._internal.utils.analytics import usage_stats
from conftest import REPO

from harness.manifests import K8S_DIR, ManifestError, containers, find, for_podman, render
from pipeline.core.params import load_params
from service import settings

pytestmark = pytest.mark.unit

# The API versions the manifests are checked against: the oldest and the newest Kubernetes
# release whose schemas kubernetes-validate bundles and that still gets patches or cloud support.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def pod_spec(docs) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(docs) -> dict:
    (found,) = containers(docs)
    return found


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_the_kubernetes_api(docs, version):
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == sorted(
        [
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "Ingress",
        ]
    )
    for doc in docs:
        # strict: a field the API does not know (a typo) is an error, not silently dropped
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field_and_a_wrong_type(docs):
    """The check above can fail: one typo and one wrong type, each refused."""
    typo = copy.deepcopy(find(docs, "Deployment"))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong = copy.deepcopy(find(docs, "HorizontalPodAutoscaler"))
    wrong["spec"]["minReplicas"] = "two"
    for broken in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_service_hpa_and_pdb_find_the_deployments_pods(docs, container):
    deployment = find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = find(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = find(docs, "HorizontalPodAutoscaler")["spec"]
    # a drain evicting maxUnavailable pods leaves one answering even at minReplicas
    assert hpa["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1
    # the HPA's CPU utilisation is a share of the request: without one it has nothing to measure
    assert "cpu" in container["resources"]["requests"]


def port_number(container: dict, port: int | str) -> int:
    """A port of `container` given by number or by name, as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_the_network_policy_admits_only_the_ingress_controller_and_prometheus_to_the_http_port(
    docs, container
):
    pods = find(docs, "Deployment")["spec"]["template"]["metadata"]
    policy = find(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pods["labels"].items()
    # Both directions are policed; no egress rule at all: the service calls nothing, not even DNS
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
    (rule,) = policy["ingress"]
    admitted = {port_number(container, p["port"]) for p in rule["ports"]}
    assert {p.get("protocol", "TCP") for p in rule["ports"]} == {"TCP"}
    probes = {
        port_number(container, container[name]["httpGet"]["port"])
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    service = find(docs, "Service")
    targets = {port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    scraped = {int(pods["annotations"]["prometheus.io/port"])}
    # the one port the probes, the Service (so the ingress controller) and Prometheus use: no other
    assert admitted == probes == targets == scraped == {port_number(container, "http")}
    # from two peers only, each narrowed by a selector (an empty `from` would admit every pod)
    peers = rule["from"]
    assert len(peers) == 2 and all(peer.get("namespaceSelector") for peer in peers)
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
    ]
    assert namespaces == ["ingress-nginx", "monitoring"]  # docs/deploy.md says to adapt them
    assert peers[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_the_ingress_serves_the_service_over_tls(docs):
    ingress = find(docs, "Ingress")["spec"]
    service = find(docs, "Service")
    service_ports = service["spec"]["ports"]
    hosts = set()
    for rule in ingress["rules"]:
        hosts.add(rule["host"])
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        port = backend["port"]
        assert port.get("name") in {p["name"] for p in service_ports} or port.get("number") in {
            p["port"] for p in service_ports
        }, port
    # every host has its certificate: no rule is served over plain HTTP only
    assert hosts and hosts <= {h for tls in ingress["tls"] for h in tls["hosts"]}
    assert all(tls["secretName"] for tls in ingress["tls"])
    assert "ingressClassName" not in ingress  # the cluster's default class: kept generic


def test_bentoml_usage_tracking_is_off_in_the_image_and_the_pod(container, monkeypatch):
    bentofile = BentoBuildConfig.from_yaml((REPO / "bentofile.yaml").open())
    in_image = {e.name: e.value for e in bentofile.envs}  # what BentoML writes as ENV lines
    in_pod = env(container)["BENTOML_DO_NOT_TRACK"]["value"]
    for value in (in_image["BENTOML_DO_NOT_TRACK"], in_pod):
        monkeypatch.setenv("BENTOML_DO_NOT_TRACK", value)
        assert usage_stats.do_not_track.__wrapped__() is True, value  # BentoML's own reading


def test_the_pod_runs_as_the_images_user_with_nothing_writable_but_its_volumes(pod_spec, container):
    security = pod_spec["securityContext"]
    assert security["runAsNonRoot"] is True
    # the uid BentoML's generated Dockerfile gives its `bentoml` user, who owns the Bento
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == BENTO_UID_GID
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    # BentoML writes its home (Prometheus multiprocess files) and Python its temporary files
    assert env(container)["BENTOML_HOME"]["value"].startswith("/tmp/") and "/tmp" in mounts
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_records_land_on_the_shared_claim(docs, container, pod_spec):
    records = env(container)["FASHION_MNIST_MONITORING_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod_spec["volumes"]}[mounts[records]]
    claim = find(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # pods on several nodes write it at once (one file per pod and worker)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_workers_follow_the_cpu_request(container):
    variables = env(container)
    field = variables["FASHION_MNIST_CPUS"]["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": container["name"], "resource": "requests.cpu", "divisor": "1"}
    assert variables["FASHION_MNIST_WORKERS"]["value"] == "cpu_count"
    assert "cpu" not in container["resources"].get("limits", {})  # no throttling, see the comment


def test_probes_ask_bentomls_health_endpoints_on_the_served_port(container, pod_spec):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 3000  # where the image's `bentoml serve` listens
    paths = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert {k: v["path"] for k, v in paths.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/livez",
    }
    assert {v["port"] for v in paths.values()} == {"http"}
    # requests in flight may run until BentoML's timeout: the pod gets longer to finish them
    assert pod_spec["terminationGracePeriodSeconds"] > load_params().serve.request_timeout_s


def test_rendering_applies_the_kustomization_and_refuses_what_it_cannot(tmp_path, docs):
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    (found,) = containers(docs)
    assert found["image"] == f"{image['name']}:{image['newTag']}"
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fashion-mnist-mlops"
    played = for_podman(docs, "localhost/fashion-mnist-classifier:abc", 40123)
    deployment = find(played, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    (http,) = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert http["hostPort"] == 40123
    assert find(docs, "Deployment")["spec"]["replicas"] > 1  # the input is left as it was
    for file in K8S_DIR.iterdir():
        (tmp_path / file.name).write_text(file.read_text())
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(kustomization | {"patches": [{"path": "x.yaml"}]})
    )
    with pytest.raises(ManifestError, match="patches"):
        render(tmp_path)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, None),  # serve.workers from params.yaml
        ({"FASHION_MNIST_CPUS": "3", "FASHION_MNIST_WORKERS": "cpu_count"}, 3),
        ({"FASHION_MNIST_CPUS": "1", "FASHION_MNIST_WORKERS": "cpu_count"}, 1),
        ({"FASHION_MNIST_WORKERS": "4"}, 4),
    ],
)
def test_service_workers_and_cpus_from_the_environment(monkeypatch, variables, expected):
    for name in ("FASHION_MNIST_CPUS", "FASHION_MNIST_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    if expected is None:
        configured = load_params(REPO / "params.yaml").serve.workers
        expected = settings.cpus() if configured == "cpu_count" else configured
    assert settings.workers() == expected


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_worker_or_cpu_count_is_refused_naming_the_variable(monkeypatch, value):
    for name in ("FASHION_MNIST_CPUS", "FASHION_MNIST_WORKERS"):
        monkeypatch.setenv(
            "FASHION_MNIST_WORKERS", "cpu_count" if name == "FASHION_MNIST_CPUS" else value
        )
        monkeypatch.setenv("FASHION_MNIST_CPUS", value if name == "FASHION_MNIST_CPUS" else "2")
        with pytest.raises(ValueError, match=f"{name}='{value}'"):
            settings.workers()
