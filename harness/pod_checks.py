"""What the Deployment (deploy/k8s) promises, checked on a played pod: one named function per
promise in CHECKS, each returning what it found and which promises that breaks
(benchmarks/deploy_check.py plays the pod and runs them; tests/test_pod_checks.py runs them on a
fake pod and a fake service).

A check sees the pod through a `Scene`: podman's view of the container (`PodView`), the
service's URL, and what several checks share, taken once on first use: the /predict answers and
the run under load.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.load_mix import LoadTest, Report, load_test

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


class PodView(Protocol):
    """What the checks ask of the played pod (benchmarks/deploy_check.py: Pod)."""

    spec: dict  # the container's spec, as rendered from deploy/k8s

    def top(self) -> list[str]: ...  # `podman top <container> user args`, one line a process

    def exec(self, *cmd: str) -> subprocess.CompletedProcess: ...

    def host_pid(self) -> int: ...

    def memory_mb(self) -> float: ...

    def volume_dir(self, name: str) -> Path: ...


def http_status(url: str, timeout: float) -> int:
    """The status a GET gets; 0 when nothing answered within `timeout`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def probe_results(base: str, container: dict) -> dict[str, int]:
    """Each probe's HTTP status, asked the way the kubelet asks it (path, port, timeout)."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    found = {}
    for name in PROBES:
        probe = container[name]["httpGet"]
        if ports.get(probe["port"], probe["port"]) != ports["http"]:
            raise ValueError(f"{name} asks port {probe['port']}; only the http port is published")
        found[name] = http_status(f"{base}{probe['path']}", container[name]["timeoutSeconds"])
    return found


def probe_while(done: threading.Event, base: str, container: dict) -> dict:
    """Every probe asked once a second until `done`: the worst status each got (0: no answer
    within its timeout), and how many times each was asked."""
    worst: dict[str, int] = {}
    rounds = 0
    while not done.wait(1.0):
        rounds += 1
        for name, status in probe_results(base, container).items():
            good = 200 <= status < 400
            if name not in worst or (200 <= worst[name] < 400 and not good):
                worst[name] = status
    return {**worst, "rounds": rounds}


def startup_allowance_s(container: dict) -> float:
    """How long the startup probe lets the pod take to be ready."""
    probe = container["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def quantity_mb(quantity: str) -> float:
    """A Kubernetes memory quantity (`768Mi`, `2Gi`, `1G`) in MB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity).groups()
    scale = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit]
    return float(number) * scale / 1e6


def cpu_request(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass(frozen=True)
class Verdict:
    """What a check found, as the result file records it, and the promises it found broken."""

    found: object
    broken: tuple[str, ...] = ()

    @classmethod
    def of(cls, found: object, held: bool, broken: str) -> Verdict:
        """`found`, and the promise `broken` (in words) unless it `held`."""
        return cls(found, () if held else (broken,))


@dataclass(frozen=True)
class UnderLoad:
    """The run under load: the container's memory before and after, the load test's report, and
    the worst answer each probe got meanwhile."""

    memory_idle_mb: float
    report: Report
    probes: dict
    memory_after_mb: float


@dataclass(eq=False)
class Scene:
    """What the checks look at."""

    pod: PodView
    base: str  # the service's URL from here
    images: np.ndarray  # test images for /predict
    expected: np.ndarray  # the champion's probabilities for them, run here
    class_names: list[str]  # the probabilities' order in `expected`
    records_volume: str  # the claim the service records its predictions on
    ready_s: float  # the slowest play's time to ready
    load: LoadTest
    records_wait_s: float = 30.0

    @cached_property
    def predicted(self) -> np.ndarray:
        """The service's probabilities for `images`, in requests it admits."""
        got, step = [], self.load.max_images
        for start in range(0, len(self.images), step):
            body = json.dumps({"images": self.images[start : start + step].tolist()}).encode()
            headers = {"Content-Type": "application/json"}
            request = urllib.request.Request(f"{self.base}/predict", body, headers)
            with urllib.request.urlopen(request, timeout=30) as resp:
                answers = json.load(resp)["predictions"]
            got += [[a["probabilities"][name] for name in self.class_names] for a in answers]
        return np.asarray(got)

    @cached_property
    def under_load(self) -> UnderLoad:
        """The load test (harness/load_mix.py), every probe asked once a second meanwhile."""
        idle = self.pod.memory_mb()
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(probe_while, done, self.base, self.pod.spec)
            try:
                report = load_test(self.base, self.images, self.load, self.pod.host_pid())
            finally:
                done.set()
            probes = asked.result()
        return UnderLoad(idle, report, probes, self.pod.memory_mb())

    def figures(self) -> dict:
        """The figures of the run under load, as the result file records them."""
        run = self.under_load
        return {
            "memory_idle_mb": run.memory_idle_mb,
            "memory_after_load_mb": run.memory_after_mb,
            "load": {k: v for k, v in asdict(run.report).items() if k != "failures"},
        }


def ready_in_time(scene: Scene) -> Verdict:
    """The slowest play was ready within the startup probe's allowance."""
    allowance = startup_allowance_s(scene.pod.spec)
    found = {"ready_s": scene.ready_s, "allowance_s": allowance}
    late = f"ready after {scene.ready_s:.1f} s, beyond the startup probe's {allowance:.0f} s"
    return Verdict.of(found, scene.ready_s <= allowance, late)


def probes_verdict(found: dict, when: str) -> Verdict:
    """Every probe was asked, and each answered 2xx or 3xx."""
    probes = {k: v for k, v in found.items() if k in PROBES}
    broken = [f"{name} ({when}) got {s}" for name, s in probes.items() if not 200 <= s < 400]
    if len(probes) != len(PROBES):
        broken.append(f"{when}: not every probe was asked ({found})")
    return Verdict(found, tuple(broken))


def probes_idle(scene: Scene) -> Verdict:
    """Every probe passes, asked as the kubelet asks it, with the pod idle."""
    return probes_verdict(probe_results(scene.base, scene.pod.spec), "probes idle")


def no_root_process(scene: Scene) -> Verdict:
    """No process of the container runs as root."""
    users = sorted({line.split()[0] for line in scene.pod.top()})
    found = {"users": users, "uid": scene.pod.exec("id", "-u").stdout.strip()}
    held = "root" not in users and found["uid"] != "0"
    return Verdict.of(found, held, f"a process runs as root: {found}")


def read_only_root(scene: Scene) -> Verdict:
    """The root filesystem refuses a write."""
    found = scene.pod.exec("touch", "/home/bentoml/bento/written").stderr.strip()
    held = "Read-only file system" in found
    return Verdict.of(found, held, f"the root filesystem took a write: {found!r}")


def no_privilege_escalation(scene: Scene) -> Verdict:
    """No privilege escalation, no capability left."""
    status = scene.pod.exec("grep", "-E", "NoNewPrivs|CapEff", "/proc/1/status").stdout
    found = dict(re.findall(r"(\w+):\s+(\w+)", status))
    held = found == {"NoNewPrivs": "1", "CapEff": "0000000000000000"}
    return Verdict.of(found, held, f"privileges left: {found}")


def a_worker_per_cpu(scene: Scene) -> Verdict:
    """One worker process per requested CPU."""
    workers = sum("_bentoml_impl.worker" in line for line in scene.pod.top())
    requested = cpu_request(scene.pod.spec["resources"]["requests"]["cpu"])
    found = {"processes": workers, "cpu_request": requested}
    held = workers == math.ceil(requested)
    return Verdict.of(found, held, f"{workers} workers for a request of {requested} CPUs")


def predict_is_the_champions(scene: Scene) -> Verdict:
    """/predict answers with the champion's probabilities (the local store's model, run here)."""
    got, expected = scene.predicted, scene.expected
    same = int((got.argmax(axis=1) == expected.argmax(axis=1)).sum()) if len(got) else 0
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    found = {"images": len(scene.images), "same class": same, "max prob diff": diff}
    held = same == len(scene.images) and diff <= 1e-5
    return Verdict.of(found, held, f"/predict differs from the champion run here: {found}")


def records_on_the_volume(scene: Scene) -> Verdict:
    """Each image sent to /predict is recorded on the records volume (within `records_wait_s`)."""
    sent = len(scene.predicted)
    folder = scene.pod.volume_dir(scene.records_volume)
    deadline = time.monotonic() + scene.records_wait_s
    while True:
        recorded = sum(len(f.read_text().splitlines()) for f in folder.glob("predictions-*.jsonl"))
        if recorded >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    found = {"sent": sent, "recorded": recorded, "files": sorted(f.name for f in folder.iterdir())}
    return Verdict.of(found, recorded >= sent, f"records missing on the volume: {found}")


def probes_under_load(scene: Scene) -> Verdict:
    """Every probe still passes while the load runs."""
    return probes_verdict(scene.under_load.probes, "probes under load")


def load_rules(scene: Scene) -> Verdict:
    """Good requests not 200, bad ones not 4xx, any 5xx, memory growth after warm-up."""
    failures = list(scene.under_load.report.failures)
    return Verdict({"failures": failures}, tuple(f"under load: {f}" for f in failures))


def memory_under_limit(scene: Scene) -> Verdict:
    """After the load, the container's memory is under its limit."""
    used = scene.under_load.memory_after_mb
    limit = quantity_mb(scene.pod.spec["resources"]["limits"]["memory"])
    found = {"used_mb": used, "limit_mb": limit}
    return Verdict.of(found, used < limit, f"memory {used} MB reached the limit {limit:.0f} MB")


# The checks in the order they run (the ones under load last), by the name the result file uses.
CHECKS: dict[str, Callable[[Scene], Verdict]] = {
    "ready in time": ready_in_time,
    "probes idle": probes_idle,
    "no root process": no_root_process,
    "read-only root": read_only_root,
    "no privilege escalation": no_privilege_escalation,
    "workers": a_worker_per_cpu,
    "/predict": predict_is_the_champions,
    "records on the volume": records_on_the_volume,
    "probes under load": probes_under_load,
    "load": load_rules,
    "memory under limit": memory_under_limit,
}


def run_checks(scene: Scene) -> dict[str, Verdict]:
    return {name: check(scene) for name, check in CHECKS.items()}


def failures(verdicts: Mapping[str, Verdict]) -> list[str]:
    """Every broken promise, in the checks' order."""
    return [broken for verdict in verdicts.values() for broken in verdict.broken]
