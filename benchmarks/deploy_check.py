"""Build the serving image and play deploy/k8s with `podman kube play`: checks and figures.

`make deploy-check` runs it after importing the @champion into the local BentoML store. Steps:
`bentoml build` (the Bento of bentofile.yaml), `bentoml containerize --backend podman` (the image
users build with Docker), then `--plays` times: play the rendered manifests (harness/manifests.py:
the kustomization's objects with the built image, one replica, the HTTP port on a host port),
wait for /readyz, tear the pod down. The last play is checked:

- the pod is ready within its startup probe's allowance, and every probe of the Deployment
  (startup, readiness, liveness) answers as the kubelet asks it (HTTP GET from outside the pod,
  with the probe's timeout), idle and under load. podman 4.3 turns only the liveness probe into a
  healthcheck that runs `curl` inside the container, which the image does not have: so the
  probes are run from here, as a kubelet would;
- no process of the container runs as root, the root filesystem is read-only, privilege
  escalation is off and no capability is left;
- one worker process per requested CPU;
- /predict answers with the champion's probabilities (the model in the local store, run here);
- each predicted image is recorded in the records volume;
- under load (harness/load.py: good and bad requests) every good request gets 200, every bad
  one a 4xx, none a 5xx, memory grows at most 10% after warm-up, every probe still passes, and
  the container's memory stays under its limit.

Figures (image size and layers, build time, time to ready per play, memory) go to the `deploy`
section of benchmarks/results/<date>-<machine>.json; docs/benchmarks.md's table is generated from it.
Needs podman that can run containers (root here; docs/deploy.md, "Playing it here: make deploy-check").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import bentoml
import numpy as np
import yaml

from harness.load import load_test, sample_images
from harness.manifests import containers, find, for_podman, render
from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement
from harness.servers import free_port
from pipeline.core.params import load_params
from service import settings

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, its output captured; a failure raises with that output."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def http_status(url: str, timeout: float) -> int:
    """The status a GET gets; 0 when nothing answered within `timeout`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def wait_ready(url: str, deadline_s: float) -> float:
    """Seconds until `url` answers 200; TimeoutError after `deadline_s`."""
    began = time.monotonic()
    while time.monotonic() - began < deadline_s:
        if http_status(url, 1) == 200:
            return time.monotonic() - began
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {deadline_s:.0f} s")


def probe_results(base: str, container: dict, ports: dict[str, int]) -> dict[str, int]:
    """Each probe's HTTP status, asked the way the kubelet asks it (path, port, timeout)."""
    found = {}
    for name in PROBES:
        probe = container[name]["httpGet"]
        if ports.get(probe["port"], probe["port"]) != ports["http"]:
            raise ValueError(f"{name} asks port {probe['port']}; only the http port is published")
        found[name] = http_status(f"{base}{probe['path']}", container[name]["timeoutSeconds"])
    return found


def probe_while(done: threading.Event, base: str, container: dict, ports: dict) -> dict:
    """Every probe asked once a second until `done`: the worst status each got (0: no answer
    within its timeout), and how many times each was asked."""
    worst: dict[str, int] = {}
    rounds = 0
    while not done.wait(1.0):
        rounds += 1
        for name, status in probe_results(base, container, ports).items():
            good = 200 <= status < 400
            if name not in worst or (200 <= worst[name] < 400 and not good):
                worst[name] = status
    return {**worst, "rounds": rounds}


def build_image() -> tuple[str, str, float]:
    """`bentoml build` then `bentoml containerize --backend podman`: (bento tag, image, seconds)."""
    out = run([sys.executable, "-m", "bentoml", "build", "--output", "tag"]).stdout
    tag = re.findall(r"__tag__:(\S+)", out)[-1]
    began = time.monotonic()
    run([sys.executable, "-m", "bentoml", "containerize", "--backend", "podman", tag])
    return tag, f"localhost/{tag}", time.monotonic() - began


def shown_mb(shown: str) -> float:
    """A size as podman shows it (`588 MB`, `7.68 kB`, `1.24GB`) in MB."""
    number, unit = re.match(r"\s*([\d.]+)\s*([kMG]?B)", shown).groups()
    return float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[unit]


def image_figures(image: str) -> dict:
    """Size of the image and of its layers of 1 MB or more, with the step that made each."""
    size = json.loads(run(["podman", "image", "inspect", image]).stdout)[0]["Size"]
    history = run(
        ["podman", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image]
    )
    layers = []
    for line in history.stdout.splitlines():
        shown, step = line.split("\t", 1)
        if (mb := shown_mb(shown)) >= 1:
            layers.append({"mb": round(mb, 1), "step": layer_name(step)})
    return {"image": image, "size_mb": round(size / 1e6, 1), "layers": layers}


LAYERS = (  # what made a layer of BentoML's generated Dockerfile, by its command
    (r"#\(nop\) ADD file:", "the base image (python:3.11-slim)"),
    (r"apt-get install", "BentoML's default system packages (apt-get: build-essential, git, ...)"),
    (r"pip install uv", "uv (BentoML installs the Python packages with it)"),
    (r"requirements\.txt", "Python packages: requirements-serve.lock"),
    (r"#\(nop\) COPY dir:", "the Bento: service code, params.yaml, the model"),
)


def layer_name(step: str) -> str:
    """What an image layer holds, in words, from the Dockerfile step that made it."""
    return next((name for pattern, name in LAYERS if re.search(pattern, step)),
                step.replace("|", "/")[:80])  # fmt: skip


class Pod:
    """The rendered manifests played with podman: `play()`, then `down()` (volumes included)."""

    def __init__(self, docs: list[dict], workdir: Path) -> None:
        self.file = workdir / "deploy.yaml"
        self.file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.volumes = [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
        deployment = find(docs, "Deployment")
        (self.spec,) = containers([deployment])
        self.container = f"{deployment['metadata']['name']}-pod-0-{self.spec['name']}"

    def play(self) -> None:
        self.down()
        run(["podman", "kube", "play", str(self.file)])

    def down(self) -> None:
        subprocess.run(["podman", "kube", "down", str(self.file)], capture_output=True)
        for volume in self.volumes:
            subprocess.run(["podman", "volume", "rm", "--force", volume], capture_output=True)

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "exec", self.container, *cmd], capture_output=True,
                              text=True)  # fmt: skip

    def host_pid(self) -> int:
        return int(run(["podman", "inspect", "--format", "{{.State.Pid}}", self.container]).stdout)

    def memory_mb(self) -> float:
        """What the memory limit counts: the container's cgroup usage, page cache included."""
        out = run(["podman", "stats", "--no-stream", "--format", "json", self.container]).stdout
        (stats,) = json.loads(out)
        return round(shown_mb(stats["mem_usage"].split("/")[0]), 1)

    def volume_dir(self, name: str) -> Path:
        out = run(["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", name]).stdout
        return Path(out.strip())


def quantity_mb(quantity: str) -> float:
    """A Kubernetes memory quantity (`768Mi`, `2Gi`, `1G`) in MB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity).groups()
    scale = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit]
    return float(number) * scale / 1e6


def cpu_request(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def checks(pod: Pod, base: str, images: np.ndarray, records_volume: str) -> tuple[dict, dict]:
    """Everything the Deployment promises, checked on the running pod: (checks, figures)."""
    from pipeline.core.inference import OnnxClassifier

    spec, found, figures = pod.spec, {}, {}
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    found["probes idle"] = probe_results(base, spec, ports)

    users = run(["podman", "top", pod.container, "user", "args"]).stdout.splitlines()[1:]
    uid = pod.exec("id", "-u").stdout.strip()
    found["no root process"] = {"users": sorted({u.split()[0] for u in users}), "uid": uid}
    write = pod.exec("touch", "/home/bentoml/bento/written")
    found["read-only root"] = write.stderr.strip()
    status = pod.exec("grep", "-E", "NoNewPrivs|CapEff", "/proc/1/status").stdout
    found["no privilege escalation"] = dict(re.findall(r"(\w+):\s+(\w+)", status))
    workers = [u for u in users if "_bentoml_impl.worker" in u]
    requested = cpu_request(spec["resources"]["requests"]["cpu"])
    found["workers"] = {"processes": len(workers), "cpu_request": requested}

    # /predict: the champion's answers (the model of the local store, run here)
    model = bentoml.models.get(settings.model_tag())
    expected = OnnxClassifier(model.path_of("model.onnx")).predict_proba(images)
    serve = load_params().serve
    max_images = serve.max_images_per_request
    got = []
    for start in range(0, len(images), max_images):
        body = json.dumps({"images": images[start : start + max_images].tolist()}).encode()
        request = urllib.request.Request(
            f"{base}/predict", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answers = json.load(resp)["predictions"]
        got += [[a["probabilities"][name] for name in model.info.metadata["class_names"]]
                for a in answers]  # fmt: skip
    diff = float(np.abs(np.asarray(got) - expected).max())
    same = int((np.argmax(got, axis=1) == expected.argmax(axis=1)).sum())
    found["/predict"] = {"images": len(images), "same class": same, "max prob diff": diff}

    folder = pod.volume_dir(records_volume)
    deadline, recorded = time.monotonic() + 30, 0
    while time.monotonic() < deadline:
        recorded = sum(len(f.read_text().splitlines()) for f in folder.glob("predictions-*.jsonl"))
        if recorded >= len(images):
            break
        time.sleep(0.2)
    found["records on the volume"] = {"sent": len(images), "recorded": recorded,
                                      "files": sorted(f.name for f in folder.iterdir())}  # fmt: skip

    figures["memory_idle_mb"] = pod.memory_mb()
    with ThreadPoolExecutor(1) as pool:  # the probes, asked every second while the load runs
        loading = threading.Event()
        asked = pool.submit(probe_while, loading, base, spec, ports)
        try:
            report = load_test(base, images, 2000, 16, 0.1, serve.max_images_per_request,
                               serve.max_upload_bytes, pod.host_pid(),
                               warmup_seconds=serve.request_timeout_s + 2)  # fmt: skip
        finally:
            loading.set()
        found["probes under load"] = asked.result()
    # good requests not 200, bad ones not 4xx, any 5xx, memory growth after warm-up over 10%
    found["load"] = {"failures": report.failures}
    figures["memory_after_load_mb"] = pod.memory_mb()
    figures["load"] = {k: v for k, v in asdict(report).items() if k != "failures"}
    limit = quantity_mb(spec["resources"]["limits"]["memory"])
    found["memory under limit"] = {"used_mb": figures["memory_after_load_mb"], "limit_mb": limit}
    return found, figures


def failures(found: dict, limit_s: float, ready_s: float) -> list[str]:
    """What of `found` breaks a promise of the Deployment."""
    bad = []
    if ready_s > limit_s:
        bad.append(f"ready after {ready_s:.1f} s, beyond the startup probe's {limit_s:.0f} s")
    for when in ("probes idle", "probes under load"):
        probes = {k: v for k, v in found[when].items() if k in PROBES}
        bad += [f"{name} ({when}) got {s}" for name, s in probes.items() if not 200 <= s < 400]
        if len(probes) != len(PROBES):
            bad.append(f"probes {when}: not every probe was asked ({found[when]})")
    if "root" in found["no root process"]["users"] or found["no root process"]["uid"] == "0":
        bad.append(f"a process runs as root: {found['no root process']}")
    if "Read-only file system" not in found["read-only root"]:
        bad.append(f"the root filesystem took a write: {found['read-only root']!r}")
    if found["no privilege escalation"] != {"NoNewPrivs": "1", "CapEff": "0000000000000000"}:
        bad.append(f"privileges left: {found['no privilege escalation']}")
    workers = found["workers"]
    if workers["processes"] != math.ceil(workers["cpu_request"]):
        bad.append(f"{workers['processes']} workers for a request of {workers['cpu_request']} CPUs")
    predict = found["/predict"]
    if predict["same class"] != predict["images"] or predict["max prob diff"] > 1e-5:
        bad.append(f"/predict differs from the champion run here: {predict}")
    if found["records on the volume"]["recorded"] < found["records on the volume"]["sent"]:
        bad.append(f"records missing on the volume: {found['records on the volume']}")
    bad += [f"under load: {failure}" for failure in found["load"]["failures"]]
    memory = found["memory under limit"]
    if memory["used_mb"] >= memory["limit_mb"]:
        bad.append(f"memory {memory['used_mb']} MB reached the limit {memory['limit_mb']:.0f} MB")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=int, default=3, help="plays timed to ready (last: checked)")
    parser.add_argument("--image", help="an image built before (skips build and containerize)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if (
        shutil.which("podman") is None
        or subprocess.run(["podman", "info"], capture_output=True).returncode
    ):
        sys.exit(
            "deploy-check needs podman able to run containers "
            '(docs/deploy.md, "Playing it here: make deploy-check")'
        )
    measurement = Measurement("deploy")
    from pipeline.shared.tracking import tracking_uri

    try:
        model = bento_model(settings.model_tag(), tracking_uri())
    except bentoml.exceptions.NotFound:
        sys.exit(
            f"no {settings.model_tag()} in the BentoML store: `make deploy-check` imports the "
            "@champion first (and trains one with `make tour` when there is none)"
        )
    figures: dict = {"podman": run(["podman", "--version"]).stdout.strip()}
    if args.image:
        image = args.image
    else:
        bento, image, seconds = build_image()
        figures |= {"bento": bento, "containerize_seconds": round(seconds, 1)}
    figures |= image_figures(image)
    port = free_port()
    docs = for_podman(render(), image, port)
    base = f"http://127.0.0.1:{port}"
    (claim,) = [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
    with tempfile.TemporaryDirectory() as tmp:
        pod = Pod(docs, Path(tmp))
        startup = pod.spec["startupProbe"]
        limit_s = startup["periodSeconds"] * startup["failureThreshold"]
        ready = []
        try:
            for play in range(args.plays):
                began = time.monotonic()
                pod.play()
                ready.append(
                    round(time.monotonic() - began + wait_ready(f"{base}/readyz", limit_s * 2), 2)
                )
                print(f"play {play + 1}: ready {ready[-1]} s after `podman kube play`")
                if play < args.plays - 1:
                    pod.down()
            found, measured = checks(pod, base, sample_images(256), claim)
        finally:
            pod.down()
    figures |= measured | {"ready_seconds": ready, "startup_allowance_seconds": limit_s,
                           "checks": found}  # fmt: skip
    bad = failures(found, limit_s, max(ready))
    figures["failures"] = bad
    print(f"image {image}: {figures['size_mb']:,.0f} MB")
    for layer in figures["layers"]:
        print(f"  {layer['mb']:>8,.1f} MB  {layer['step'][:90]}")
    print(f"ready after play (s): {ready}; startup probe allows {limit_s} s")
    print(
        f"memory MB: idle {figures['memory_idle_mb']}, after load {figures['memory_after_load_mb']}"
    )
    for name, value in found.items():
        print(f"{name:<24} {value}")
    out = measurement.record([model], figures, args.results)
    print(f"wrote {out}")
    if bad:
        sys.exit("FAILED: " + "; ".join(bad))
    print("deploy-check passed")


if __name__ == "__main__":
    main()
