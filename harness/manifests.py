"""The Kubernetes objects of deploy/k8s as `kubectl apply -k` would send them, and the same
objects made playable by `podman kube play` on one machine (benchmarks/deploy_check.py).

Only what deploy/k8s/kustomization.yaml uses is rendered (`resources`, `labels` without
selectors, `images`); `render` refuses any other kustomize field rather than ignore it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "labels", "images"}


class ManifestError(ValueError):
    """A kustomization this renderer cannot render faithfully, or a missing object."""


def render(directory: Path = K8S_DIR) -> list[dict]:
    """Every object of the kustomization in `directory`, in its `resources` order, with its
    common labels and image overrides applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if unknown := set(kustomization) - KUSTOMIZE_FIELDS:
        raise ManifestError(f"kustomization.yaml: fields {sorted(unknown)} are not rendered here")
    docs = [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((directory / resource).read_text())
        if doc
    ]
    for entry in kustomization.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise ManifestError("kustomization.yaml: labels into selectors/templates not rendered")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for container in containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    return docs


def find(docs: list[dict], kind: str) -> dict:
    """The one object of `kind`."""
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        raise ManifestError(f"expected one {kind}, found {len(found)}")
    return found[0]


def containers(docs: list[dict]) -> list[dict]:
    """The containers of every workload among `docs`."""
    return [
        c
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def for_podman(docs: list[dict], image: str, host_port: int) -> list[dict]:
    """`docs` as one machine plays them: the Deployment's image set to `image` (what `kustomize
    edit set image` does), one replica (podman makes a pod per replica, and they would share the
    host port), and its HTTP port published on `host_port` (podman pods have their own network
    namespace; a cluster reaches pods through the Service instead). Everything else as rendered:
    podman plays the Deployment and the claim, and skips (logs and ignores) the kinds it does not
    play: the Service, HPA, PDB, NetworkPolicy and Ingress."""
    docs = copy.deepcopy(docs)
    deployment = find(docs, "Deployment")
    deployment["spec"]["replicas"] = 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["image"] = image
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    http["hostPort"] = host_port
    return docs
