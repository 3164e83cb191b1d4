"""Build the serving image and play deploy/k8s with `podman kube play`: checks and figures.

`make deploy-check` runs it after importing the @champion into the local BentoML store. Steps:
`bentoml build` (the Bento of bentofile.yaml), `bentoml containerize --backend podman` (the image
users build with Docker), then `--plays` times: play the rendered manifests (harness/manifests.py:
the kustomization's objects with the built image, one replica, the HTTP port on a host port),
wait for /readyz, tear the pod down. The last play is checked (harness/pod_checks.py, one named
check per promise):

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
- under load (harness/load_mix.py: good and bad requests) every good request gets 200, every bad
  one a 4xx, none a 5xx, memory grows at most 10% after warm-up, every probe still passes, and
  the container's memory stays under its limit.

Figures (image size and layers, build time, time to ready per play, memory) go to the `deploy`
section of benchmarks/results/<date>-<machine>.json; docs/benchmarks.md's table is generated from it.
Needs podman that can run containers (root here; docs/deploy.md, "Playing it without a cluster: make deploy-check").
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bentoml
import numpy as np
import yaml

from harness.load_mix import LoadTest, sample_images
from harness.manifests import containers, find, for_podman, render
from harness.models import bento_model
from harness.pod_checks import Scene, failures, http_status, run_checks, startup_allowance_s
from harness.results import RESULTS_DIR, Measurement
from harness.servers import free_port
from pipeline.core.inference import OnnxClassifier
from pipeline.core.params import load_params
from service import settings


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, its output captured; a failure raises with that output."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def wait_ready(url: str, deadline_s: float) -> float:
    """Seconds until `url` answers 200; TimeoutError after `deadline_s`."""
    began = time.monotonic()
    while time.monotonic() - began < deadline_s:
        if http_status(url, 1) == 200:
            return time.monotonic() - began
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {deadline_s:.0f} s")


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
    (r"apt-get install", "system packages (apt-get install)"),
    (r"pip install uv", "uv (BentoML installs the Python packages with it)"),
    (r"requirements\.txt", "Python packages: requirements-serve.lock"),
    (r"#\(nop\) COPY dir:", "the Bento: service code, params.yaml, the model"),
)


def layer_name(step: str) -> str:
    """What an image layer holds, in words, from the Dockerfile step that made it."""
    named = (name for pattern, name in LAYERS if re.search(pattern, step))
    return next(named, step.replace("|", "/")[:80])


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
        argv = ["podman", "exec", self.container, *cmd]
        return subprocess.run(argv, capture_output=True, text=True)

    def top(self) -> list[str]:
        """The container's processes: user and command line, one line each."""
        return run(["podman", "top", self.container, "user", "args"]).stdout.splitlines()[1:]

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


def champion(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The champion's probabilities for `images`, run here (the model of the local store), and
    the class names they are in the order of."""
    model = bentoml.models.get(settings.model_tag())
    expected = OnnxClassifier(model.path_of("model.onnx")).predict_proba(images)
    return expected, model.info.metadata["class_names"]


def play(pod: Pod, base: str, plays: int) -> list[float]:
    """Play the pod `plays` times, each timed to ready and torn down but the last: the seconds
    from `podman kube play` to the first 200 on /readyz."""
    allowance = startup_allowance_s(pod.spec)
    ready = []
    for n in range(plays):
        began = time.monotonic()
        pod.play()
        waited = wait_ready(f"{base}/readyz", allowance * 2)
        ready.append(round(time.monotonic() - began + waited, 2))
        print(f"play {n + 1}: ready {ready[-1]} s after `podman kube play`")
        if n < plays - 1:
            pod.down()
    return ready


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
            '(docs/deploy.md, "Playing it without a cluster: make deploy-check")'
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
    images = sample_images(256)
    expected, class_names = champion(images)
    load = LoadTest.for_service(load_params().serve, 2000, concurrency=16, bad_fraction=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        pod = Pod(docs, Path(tmp))
        try:
            ready = play(pod, base, args.plays)
            scene = Scene(pod, base, images, expected, class_names, claim, max(ready), load)
            verdicts = run_checks(scene)
            figures |= scene.figures()
        finally:
            pod.down()
    allowance = startup_allowance_s(pod.spec)
    found = {name: verdict.found for name, verdict in verdicts.items()}
    bad = failures(verdicts)
    figures |= {"ready_seconds": ready, "startup_allowance_seconds": allowance}
    figures |= {"checks": found, "failures": bad}
    print(f"image {image}: {figures['size_mb']:,.0f} MB")
    for layer in figures["layers"]:
        print(f"  {layer['mb']:>8,.1f} MB  {layer['step'][:90]}")
    print(f"ready after play (s): {ready}; startup probe allows {allowance} s")
    idle, loaded = figures["memory_idle_mb"], figures["memory_after_load_mb"]
    print(f"memory MB: idle {idle}, after load {loaded}")
    for name, value in found.items():
        print(f"{name:<24} {value}")
    out = measurement.record([model], figures, args.results)
    print(f"wrote {out}")
    if bad:
        sys.exit("FAILED: " + "; ".join(bad))
    print("deploy-check passed")


if __name__ == "__main__":
    main()
