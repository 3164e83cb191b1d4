"""The checks `make deploy-check` runs on the played pod (harness/pod_checks.py), on a fake pod
and a fake service: a pod that keeps every promise passes every check, and each broken promise
is reported by its own check alone. The real pod (root podman, an image build: minutes) is played
by `make deploy-check` itself, outside the suite (docs/deploy.md)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from harness.load import Answer, Request, Summary
from harness.load_mix import LoadTest, Report
from harness.manifests import containers, find, render
from harness.pod_checks import (
    CHECKS,
    Scene,
    UnderLoad,
    failures,
    quantity_mb,
    run_checks,
    startup_allowance_s,
)

pytestmark = pytest.mark.unit

CLASSES = [f"class {i}" for i in range(10)]
WORKER = "/usr/local/bin/python -m _bentoml_impl.worker.service . --fd 3"


def probabilities(images: np.ndarray) -> np.ndarray:
    """A stand-in model: 0.91 for class (sum of pixels mod 10), 0.01 for each other."""
    proba = np.full((len(images), 10), 0.01)
    proba[np.arange(len(images)), images.reshape(len(images), -1).sum(axis=1) % 10] = 0.91
    return proba


@dataclass
class World:
    """What the fake pod and the fake service show; a test breaks one promise of it."""

    records: Path
    base: str = ""  # the fake service's URL
    status: dict[str, int] = field(default_factory=lambda: {"/readyz": 200, "/livez": 200})
    users: tuple[str, ...] = ("bentoml", "bentoml", "bentoml")
    workers: int = 2
    uid: str = "1034"
    touch_error: str = "touch: cannot touch '/home/bentoml/bento/written': Read-only file system"
    status_file: str = "NoNewPrivs:\t1\nCapEff:\t0000000000000000\n"
    shift: float = 0.0  # added to the service's first probability: not the champion's answers
    unrecorded: int = 0  # images the service leaves unrecorded


class FakeService(BaseHTTPRequestHandler):
    world: World

    def do_GET(self) -> None:
        self.answer(self.world.status.get(self.path, 404), b"{}")

    def do_POST(self) -> None:
        images = np.asarray(
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))["images"]
        )
        proba = probabilities(images)
        proba[:, 0] += self.world.shift
        answers = [{"probabilities": dict(zip(CLASSES, map(float, p), strict=True))} for p in proba]
        with (self.world.records / "predictions-2026-12-01-pod.jsonl").open("a") as f:
            f.writelines("{}\n" for _ in range(len(images) - self.world.unrecorded))
        self.answer(200, json.dumps({"predictions": answers}).encode())

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


class FakePod:
    """podman's view of a container, as the checks ask it, from a `World`."""

    def __init__(self, world: World) -> None:
        self.world = world
        docs = render()  # the real manifests
        (self.spec,) = containers([find(docs, "Deployment")])
        self.claim = find(docs, "PersistentVolumeClaim")["metadata"]["name"]

    def top(self) -> list[str]:
        lines = [f"{self.world.users[0]} /usr/local/bin/python -m bentoml start-http-server"]
        lines += [f"{user} {WORKER}" for user in self.world.users[1 : 1 + self.world.workers]]
        return lines

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        outputs = {
            ("id", "-u"): (self.world.uid + "\n", ""),
            ("touch", "/home/bentoml/bento/written"): ("", self.world.touch_error),
            ("grep", "-E", "NoNewPrivs|CapEff", "/proc/1/status"): (self.world.status_file, ""),
        }
        stdout, stderr = outputs[cmd]
        return subprocess.CompletedProcess(cmd, 1 if stderr else 0, stdout, stderr)

    def host_pid(self) -> int:
        raise AssertionError("the run under load is given to these tests, not run")

    def memory_mb(self) -> float:
        raise AssertionError("the run under load is given to these tests, not run")

    def volume_dir(self, name: str) -> Path:
        assert name == self.claim, name
        return self.world.records


def report(good_not_200: int = 0) -> Report:
    """A load test's report: 10 good requests answered 200, `good_not_200` more answered 503."""
    request = Request("/predict")
    answers = [Answer(request, i / 100, 200, 0.01) for i in range(10)]
    answers += [Answer(request, 0.1, 503, 0.001)] * good_not_200
    test = LoadTest(10, 2, 0.0, 5, 1000)
    summary = Summary.of(answers)
    return Report(**vars(summary), concurrency=2, failures=test.failures(summary, 0.01))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(records=tmp_path)
    handler = type("Handler", (FakeService,), {"world": world})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    world.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield world
    server.shutdown()
    server.server_close()


def scene(world: World, **changes: object) -> Scene:
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    under_load = UnderLoad(
        memory_idle_mb=330.0,
        report=changes.pop("report", report()),
        probes=changes.pop(
            "probes", {"startupProbe": 200, "readinessProbe": 200, "livenessProbe": 200}
        ),
        memory_after_mb=changes.pop("memory_after_mb", 350.0),
    )
    pod = FakePod(world)
    made = Scene(
        pod=pod,
        base=world.base,
        images=images,
        expected=probabilities(images),
        class_names=CLASSES,
        records_volume=pod.claim,
        ready_s=changes.pop("ready_s", 12.5),
        load=LoadTest(2000, 16, 0.1, max_images=5, max_upload_bytes=1000),
        records_wait_s=0.5,
    )
    made.under_load = under_load  # the load test itself runs against a real service elsewhere
    assert not changes, changes
    return made


def test_a_pod_that_keeps_every_promise_passes_every_check(world):
    the_scene = scene(world)
    verdicts = run_checks(the_scene)
    assert list(verdicts) == list(CHECKS)
    assert failures(verdicts) == [], failures(verdicts)
    found = {name: v.found for name, v in verdicts.items()}
    assert found["workers"] == {"processes": 2, "cpu_request": 2.0}
    assert found["/predict"] == {"images": 12, "same class": 12, "max prob diff": 0.0}
    assert found["records on the volume"]["recorded"] == 12  # sent in 3 requests of <= 5
    assert found["probes idle"] == {
        "startupProbe": 200,
        "readinessProbe": 200,
        "livenessProbe": 200,
    }
    assert found["memory under limit"]["limit_mb"] == quantity_mb("1Gi") == 1073.741824
    figures = the_scene.figures()
    assert figures["memory_idle_mb"] == 330.0 and figures["memory_after_load_mb"] == 350.0
    assert figures["load"]["requests"] == 10 and "failures" not in figures["load"]


@dataclass(frozen=True)
class Broken:
    """One promise broken: the check that must report it, how its report starts, and what the
    fake pod and service show (`world`) or the scene has (`scene`) instead."""

    check: str
    message: str
    world: dict = field(default_factory=dict)
    scene: dict = field(default_factory=dict)


LIVENESS_DOWN = {"/readyz": 200, "/livez": 500}
PRIVILEGED = "NoNewPrivs:\t0\nCapEff:\t00000000a80425fb\n"
BROKEN = [
    Broken(
        "ready in time",
        "ready after 61.0 s, beyond the startup probe's 60 s",
        scene={"ready_s": 61.0},
    ),
    Broken("probes idle", "livenessProbe (probes idle) got 500", world={"status": LIVENESS_DOWN}),
    Broken(
        "no root process", "a process runs as root", world={"users": ("root", "bentoml", "bentoml")}
    ),
    Broken("read-only root", "the root filesystem took a write: ''", world={"touch_error": ""}),
    Broken("no privilege escalation", "privileges left", world={"status_file": PRIVILEGED}),
    Broken("workers", "1 workers for a request of 2.0 CPUs", world={"workers": 1}),
    Broken("/predict", "/predict differs from the champion run here", world={"shift": 1e-3}),
    Broken(
        "records on the volume",
        "records missing on the volume: {'sent': 12, 'recorded': 9",
        world={"unrecorded": 1},
    ),
    Broken(
        "probes under load",
        "livenessProbe (probes under load) got 0",
        scene={"probes": {"startupProbe": 200, "livenessProbe": 0}},
    ),
    Broken(
        "load",
        "under load: 3 good requests did not get 200",
        scene={"report": report(good_not_200=3)},
    ),
    Broken(
        "memory under limit",
        "memory 1100.0 MB reached the limit 1074 MB",
        scene={"memory_after_mb": 1100.0},
    ),
]


def test_every_check_has_a_broken_case():
    assert sorted(b.check for b in BROKEN) == sorted(CHECKS)


@pytest.mark.parametrize("broken", BROKEN, ids=lambda b: b.check)
def test_a_broken_promise_is_reported_by_its_own_check_alone(world, broken):
    for name, value in broken.world.items():
        setattr(world, name, value)
    verdicts = run_checks(scene(world, **broken.scene))
    assert [n for n, v in verdicts.items() if v.broken] == [broken.check], failures(verdicts)
    reported = verdicts[broken.check].broken
    assert any(b.startswith(broken.message) for b in reported), reported
    assert failures(verdicts) == list(reported)


def test_the_startup_allowance_is_the_probes_period_times_its_threshold(world):
    spec = FakePod(world).spec
    probe = spec["startupProbe"]
    assert startup_allowance_s(spec) == probe["periodSeconds"] * probe["failureThreshold"] == 60
