"""The BentoML service over real HTTP: `bentoml serve` of a workspace where the pipeline ran.

The served model is the champion `register` promoted from a 2,000-image, 1-epoch run; its
answers are compared with the evaluate stage's predictions.csv (same model, same preprocessing).
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import yaml
from conftest import BIN, REPO, free_port, run, start_server, stop
from PIL import Image

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import load_params

pytest_plugins = ["service_fixtures"]  # champion, service_url, test_images, evaluated
pytestmark = pytest.mark.service
CONFIDENCE_TOLERANCE = 1e-4


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def post_predict(url: str, images: np.ndarray | list, **kw: object) -> requests.Response:
    payload = {"images": images.tolist() if isinstance(images, np.ndarray) else images}
    return requests.post(f"{url}/predict", json=payload, timeout=60, **kw)


def post_image(
    url: str, data: bytes, name: str = "item.png", ctype: str = "image/png", **form: str
):
    return requests.post(
        f"{url}/classify", files={"image": (name, data, ctype)}, data=form, timeout=60
    )


def assert_prediction(pred: dict, champion: dict) -> None:
    assert set(pred["probabilities"]) == set(CLASS_NAMES)
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert pred["class_name"] == CLASS_NAMES[pred["class_id"]]
    assert pred["confidence"] == max(pred["probabilities"].values())
    assert pred["model"] == {"name": champion["model_name"], "version": champion["version"]}


def assert_matches_evaluate(preds: list[dict], evaluated, indices) -> None:
    for pred, i in zip(preds, indices, strict=True):
        assert pred["class_id"] == evaluated.loc[i, "predicted_id"], f"test image {i}"
        assert abs(pred["confidence"] - evaluated.loc[i, "confidence"]) < CONFIDENCE_TOLERANCE


def test_metadata_names_the_champion(service_url, champion, pipeline_run):
    meta = requests.get(f"{service_url}/metadata", timeout=10).json()
    params = load_params(pipeline_run / "params.yaml")
    current = champion["champion"]
    assert meta["model"] == {
        "name": params.mlflow.registered_model_name,
        "version": current["version"],
    }
    assert meta["mlflow_run_id"] == current["run_id"]
    assert meta["bento_model"] == current["bento_model"]
    assert meta["val_accuracy"] == pytest.approx(current["val_accuracy"], abs=1e-4)
    assert meta["test_accuracy"] == pytest.approx(current["test_accuracy"], abs=1e-4)
    assert meta["model_sha256"] == current["model_sha256"]
    assert meta["onnx_sha256"] == current["onnx_sha256"]
    assert re.fullmatch(r"onnxruntime \d+\.\d+\.\d+", meta["runtime"])
    assert meta["class_names"] == list(CLASS_NAMES)
    assert {"classify", "predict"} <= set(meta["input"])
    assert meta["limits"] == params.serve.model_dump(
        include={"max_images_per_request", "max_upload_bytes", "request_timeout_s"}
    )


def test_probes_metrics_and_docs_stay_available(service_url):
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
    assert requests.get(f"{service_url}/livez", timeout=10).status_code == 200
    assert (
        "bentoml_service_request_total" in requests.get(f"{service_url}/metrics", timeout=10).text
    )
    paths = requests.get(f"{service_url}/docs.json", timeout=10).json()["paths"]
    assert {"/classify", "/predict", "/metadata"} <= set(paths)
    assert requests.get(service_url, timeout=10).status_code == 200  # the OpenAPI UI


def test_predict_equals_evaluate_stage(service_url, champion, test_images, evaluated):
    x, _ = test_images
    resp = post_predict(service_url, x[:64])
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 64
    for pred in preds:
        assert_prediction(pred, champion["champion"])
    assert_matches_evaluate(preds, evaluated, range(64))


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "I;16", {}),  # a 16-bit PNG: scaled to 8 bits, not clipped
        ("WEBP", "RGB", {"lossless": True}),
        ("BMP", "L", {}),
        ("GIF", "L", {}),
    ],
)
def test_classify_lossless_image_equals_evaluate_stage(
    service_url, champion, test_images, evaluated, fmt, mode, options
):
    x, _ = test_images
    for i in range(4):
        pixels = x[i].astype(np.uint16) * 257 if mode == "I;16" else x[i]
        image = Image.fromarray(pixels)
        data = encode(image if mode in ("L", "I;16") else image.convert(mode), fmt, **options)
        resp = post_image(service_url, data, f"item.{fmt.lower()}", f"image/{fmt.lower()}")
        assert resp.status_code == 200, resp.text
        assert_prediction(resp.json(), champion["champion"])
        assert_matches_evaluate([resp.json()], evaluated, [i])


def test_classify_jpeg_matches_predict_on_its_pixels(service_url, test_images):
    from pipeline.core.preprocess import image_to_pixels

    x, _ = test_images
    for i in range(4):
        data = encode(x[i], "JPEG", quality=90)
        resp = post_image(service_url, data, "item.jpg", "image/jpeg")
        assert resp.status_code == 200, resp.text
        pixels, inverted = image_to_pixels(Image.open(io.BytesIO(data)))
        assert resp.json()["inverted"] is inverted is False
        expected = post_predict(service_url, pixels[None]).json()["predictions"][0]
        assert resp.json()["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_classify_photo_is_fitted_and_inverted_automatically(service_url, test_images, evaluated):
    """A large dark-on-light RGB photo of a test item: auto-inverted, fitted to 28x28."""
    x, _ = test_images
    i = int(evaluated["confidence"].iloc[:200].idxmax())  # a clear-cut item
    photo = Image.fromarray(255 - x[i]).resize((300, 300), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (400, 300), "white")  # wider than tall: aspect ratio kept
    canvas.paste(photo, (50, 0))
    data = encode(canvas, "JPEG", quality=95)
    auto = post_image(service_url, data, "photo.jpg", "image/jpeg").json()
    forced_on = post_image(service_url, data, "photo.jpg", "image/jpeg", invert="true").json()
    forced_off = post_image(service_url, data, "photo.jpg", "image/jpeg", invert="false").json()
    assert auto["probabilities"] == forced_on["probabilities"]
    assert auto["probabilities"] != forced_off["probabilities"]
    assert (auto["inverted"], forced_on["inverted"], forced_off["inverted"]) == (True, True, False)
    assert auto["class_id"] == evaluated.loc[i, "predicted_id"]


def multipart(body: bytes, boundary: str = "b0undary") -> dict:
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _bad_requests(x: np.ndarray, limits) -> list:
    png = encode(x[0], "PNG")
    one = x[0].tolist()
    big = b"\0" * (limits.max_upload_bytes + 1)
    classify, predict = "/classify", "/predict"
    # fmt: skip on this list: a table, one case per row (name, path, request, status, words);
    # formatted, each case would take five to ten lines and the table would be lost.
    return [
        ("not an image", classify, {"files": {"image": ("a.png", b"hello, world" * 10, "image/png")}},
         415, "not a PNG"),
        ("truncated PNG", classify, {"files": {"image": ("a.png", png[: len(png) // 2], "image/png")}},
         422, "truncated"),
        ("empty upload", classify, {"files": {"image": ("a.png", b"", "image/png")}}, 422, "empty"),
        ("oversize upload", classify, {"files": {"image": ("a.png", big, "image/png")}}, 413, "limit"),
        ("TIFF", classify, {"files": {"image": ("a.tif", encode(x[0], "TIFF"), "image/tiff")}},
         415, "not a PNG"),
        ("text part", classify, {"files": {"image": ("a.txt", b"hello", "text/plain")}}, 415, "text/plain"),
        ("JSON to classify", classify, {"json": {"image": "a.png"}}, 415, "multipart/form-data"),
        ("image as text field", classify, {"data": {"image": "http://example.com/a.png"}}, 415,
         "multipart/form-data"),
        ("image as form text", classify,
         multipart(b'--b0undary\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
                   b"http://example.com/a.png\r\n--b0undary--\r\n"), 400, "file upload"),
        ("no image field", classify, {"files": {"picture": ("a.png", png, "image/png")}}, 400, "`image`"),
        ("malformed multipart", classify, multipart(b"garbage"), 400, "multipart"),
        ("bad invert", classify, {"files": {"image": ("a.png", png, "image/png")}, "data": {"invert": "maybe"}},
         400, "invert"),
        ("form to predict", predict, {"data": {"images": "[]"}}, 415, "application/json"),
        ("invalid JSON", predict, {"data": b'{"images": [', "headers": {"Content-Type": "application/json"}},
         400, "JSON"),
        ("missing images", predict, {"json": {"pictures": [one]}}, 400, "images"),
        ("empty list", predict, {"json": {"images": []}}, 400, "at least 1"),
        ("27 rows", predict, {"json": {"images": [one[:27]]}}, 400, "at least 28"),
        ("29 columns", predict, {"json": {"images": [[[*row, 0] for row in one]]}}, 400, "at most 28"),
        ("flat image", predict, {"json": {"images": [x[0].ravel().tolist()]}}, 400, "list"),
        ("value 256", predict, {"json": {"images": [[[256] * 28, *one[1:]]]}}, 400, "less than or equal to 255"),
        ("value -1", predict, {"json": {"images": [[[-1] * 28, *one[1:]]]}}, 400, "greater than or equal to 0"),
        ("NaN", predict, {"data": json.dumps({"images": [[[math.nan] * 28, *one[1:]]]}),
                          "headers": {"Content-Type": "application/json"}}, 400, "finite"),
        ("fraction", predict, {"json": {"images": [[[0.5] * 28, *one[1:]]]}}, 400, "integer"),
        ("too many images", predict, {"json": {"images": [one] * (limits.max_images_per_request + 1)}},
         413, "limit"),
        ("oversize JSON", predict, {"data": big, "headers": {"Content-Type": "application/json"}}, 413, "limit"),
    ]  # fmt: skip


def test_bad_input_gets_a_4xx_naming_the_problem(service_url, test_images, pipeline_run):
    x, _ = test_images
    limits = load_params(pipeline_run / "params.yaml").serve
    failures = []
    for name, path, kwargs, status, words in _bad_requests(x, limits):
        resp = requests.post(f"{service_url}{path}", timeout=60, **kwargs)
        body = resp.json()  # every answer is JSON
        text = json.dumps(body)
        if resp.status_code != status or words.lower() not in text.lower():
            failures.append(f"{name}: {resp.status_code} {text[:300]}")
    assert not failures, "\n".join(failures)
    # ...and the server keeps serving.
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
    assert post_predict(service_url, x[:2]).status_code == 200


def test_wrong_method_gets_a_json_405(service_url):
    for method, path in (("GET", "/predict"), ("PUT", "/classify"), ("DELETE", "/predict")):
        resp = requests.request(method, f"{service_url}{path}", timeout=30)
        assert resp.status_code == 405, (method, path, resp.text)
        assert resp.headers["Allow"] == "POST"
        assert f"{method} {path}: use POST" in resp.json()["error"]


def histogram(url: str, metric: str) -> tuple[float, float]:
    """(observations, observations <= 1) so far of a histogram on the service's /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = ones = 0.0
    for line in text.splitlines():
        if line.startswith(f"{metric}_count"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{metric}_bucket") and re.search(r'le="1(\.0)?"', line):
            ones += float(line.rsplit(" ", 1)[1])
    return total, ones


def test_concurrent_requests_are_batched_and_answered_in_order(service_url, test_images, evaluated):
    x, _ = test_images
    before = histogram(service_url, "fashion_model_batch_images")
    # 192 requests from serve.min_in_flight threads (as many as a worker always admits: this is
    # about batching, not shedding); every 4th carries 3 images, so batches mix request sizes.
    jobs = [list(range(i, i + 3)) if i % 4 == 0 else [i] for i in range(192)]

    def call(indices: list[int]) -> tuple[list[int], requests.Response]:
        return indices, post_predict(service_url, x[indices])

    with ThreadPoolExecutor(load_params().serve.min_in_flight) as pool:
        results = list(pool.map(call, jobs))
    for indices, resp in results:
        assert resp.status_code == 200, resp.text
        assert_matches_evaluate(resp.json()["predictions"], evaluated, indices)
    after = histogram(service_url, "fashion_model_batch_images")
    runs, single_image_runs = after[0] - before[0], after[1] - before[1]
    assert 0 < runs < len(jobs), "every request was its own model run"
    assert runs - single_image_runs > 0, "no model run of more than one image"


@pytest.mark.unit
def test_the_serving_lock_is_requirements_lock_cut_to_what_the_service_needs():
    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([\w.-]+)==([^\s\\]+)", path.read_text(), re.M))

    locked, serving = pins(REPO / "requirements.lock"), pins(REPO / "requirements-serve.lock")
    assert {name: locked.get(name) for name in serving} == serving  # same version everywhere
    # every package of the image with the SHA-256 of its files: a changed upload fails the build
    entries = re.split(
        r"^(?=[\w.-]+==)", (REPO / "requirements-serve.lock").read_text(), flags=re.M
    )
    unhashed = [e.split()[0] for e in entries[1:] if "--hash=sha256:" not in e]
    assert len(entries) - 1 == len(serving) and not unhashed, unhashed
    assert {"bentoml", "onnxruntime", "numpy", "pillow", "pydantic", "pyyaml", "fastapi"} <= set(
        serving
    )
    training = {"tensorflow", "keras", "mlflow", "dvc", "pandas", "scikit-learn", "tf2onnx"}
    assert not training & set(serving)
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["python"] == {
        "requirements_txt": "requirements-serve.lock",
        "lock_packages": False,
    }


BUILD_TOOLS = re.compile(r"(?<![\w.-])(build-essential|gcc|g\+\+|clang|make|git)(?![\w.-])")


def hashed_pins(requirements: str) -> dict[str, set[str]]:
    """`name==version` -> the SHA-256 hashes a requirements file gives it."""
    pins: dict[str, set[str]] = {}
    for entry in re.split(r"^(?=[\w.-]+==)", requirements, flags=re.M)[1:]:
        pins.setdefault(entry.split()[0], set()).update(re.findall(r"--hash=sha256:(\w+)", entry))
    return pins


def assert_slim_serving_image(dockerfile: str, requirements: str) -> None:
    """What the Bento's Dockerfile must do (service/container_image.py): python:3.11-slim with no
    compiler or git, the `bentoml` user with BentoML's uid, the serving lock installed with its
    hashes and wheels only."""
    from bentoml._internal.container.generate import BENTO_UID_GID

    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["python:3.11-slim"]
    # one Dockerfile instruction per entry, continuation lines joined
    steps = re.split(r"\n(?=[A-Z]+ )", re.sub(r"\\\n", " ", dockerfile))
    runs = [s for s in steps if s.startswith("RUN ")]
    assert not [r for r in runs if BUILD_TOOLS.search(r)], "a step installs build tools or git"
    assert not [r for r in runs if re.search(r"apt-get|apk |yum ", r)], "a system package step"
    assert f"ARG BENTO_USER_UID={BENTO_UID_GID}" in map(str.strip, steps) and BENTO_UID_GID == 1034
    assert [r for r in runs if "useradd -m -u $BENTO_USER_UID -g $BENTO_USER_GID" in r]
    assert re.findall(r"^USER (\S+)", dockerfile, re.M)[-1] == "bentoml"
    install = [r for r in runs if "pip install -r $BENTO_PATH/env/python/requirements.txt" in r]
    assert len(install) == 1 and "uv " in install[0]
    # requirements.txt: wheels only, then every pin of the serving lock with all of its hashes
    assert requirements.startswith("--only-binary :all:\n")
    lock = hashed_pins((REPO / "requirements-serve.lock").read_text())
    got = hashed_pins(requirements)
    assert {pin: got.get(pin) for pin in lock} == lock and all(lock.values())


@pytest.mark.unit
def test_the_bentos_dockerfile_installs_the_lock_and_no_build_tools(tmp_path):
    """The Dockerfile `bentoml build` writes, made the way it makes it (Bento.create): the
    service's image (service/container_image.py) with bentofile.yaml's options merged in, then
    frozen into env/docker/Dockerfile and env/python/requirements.txt. `bentoml build` itself
    runs in test_bento_build_contains_model_and_serves (it needs the trained champion)."""
    from _bentoml_sdk.images import populate_image_from_build_config
    from bentoml._internal.bento.build_config import BentoBuildConfig

    from service.service import FashionClassifier

    with (REPO / "bentofile.yaml").open() as bentofile:
        build_config = BentoBuildConfig.from_yaml(bentofile)
    assert build_config.docker.distro is None  # any preset distro adds build-essential and git
    image = populate_image_from_build_config(FashionClassifier.image, build_config, str(REPO))
    image.freeze(tmp_path, build_config.envs)
    dockerfile = (tmp_path / "env" / "docker" / "Dockerfile").read_text()
    assert_slim_serving_image(
        dockerfile, (tmp_path / "env" / "python" / "requirements.txt").read_text()
    )
    # the check itself: BentoML's default image (a preset distro) fails it
    default = populate_image_from_build_config(None, build_config, str(REPO))
    default.freeze(tmp_path / "default", build_config.envs)
    with pytest.raises(AssertionError, match="build tools or git"):
        assert_slim_serving_image(
            (tmp_path / "default" / "env" / "docker" / "Dockerfile").read_text(),
            (tmp_path / "default" / "env" / "python" / "requirements.txt").read_text(),
        )


@pytest.mark.e2e
def test_bento_build_contains_model_and_serves(
    pipeline_run, pipeline_env, champion, tmp_path, test_images, evaluated
):
    """`bentoml build` packs the champion; the exported Bento serves it from an empty store."""
    tag = run([str(BIN / "bentoml"), "build", "-o", "tag"], pipeline_run, pipeline_env).stdout
    tag = re.search(r"__tag__:(\S+)", tag).group(1)
    home = Path(pipeline_env["BENTOML_HOME"])
    bento_dir = home / "bentos" / tag.replace(":", "/")
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    model_tag = champion["champion"]["bento_model"]
    served = {m["tag"] for svc in info["services"] for m in svc["models"]}
    assert served == {model_tag}
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] == "bentoml"  # the image runs as the non-root user
    assert dockerfile.rindex("\nUSER bentoml") < re.search(r"^ENTRYPOINT", dockerfile, re.M).start()
    # The image installs exactly the serving lock.
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    pinned = set(re.findall(r"^([\w.-]+==\S+)", requirements, re.M))  # BentoML adds its own pin
    assert pinned == set(
        re.findall(r"^([\w.-]+==\S+)", (REPO / "requirements-serve.lock").read_text(), re.M)
    )
    assert_slim_serving_image(dockerfile, requirements)  # no compiler or git, the uid, the lock

    archive = tmp_path / "classifier.bento"
    run([str(BIN / "bentoml"), "export", tag, str(archive)], pipeline_run, pipeline_env)
    name, version = model_tag.split(":")
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
        assert f"./models/{name}/{version}/model.onnx" in members
        # The pipeline's core, whole, and nothing else of the pipeline (no stage, no TensorFlow code)
        packed = {m for m in members if m.startswith("./src/pipeline/") and m.endswith(".py")}
        core = {f"./src/{p.relative_to(REPO)}" for p in (REPO / "pipeline" / "core").glob("*.py")}
        assert packed == core | {"./src/pipeline/__init__.py"}
        assert "./env/docker/Dockerfile" in members

    # A machine that only serves: a venv holding the serving lock alone, an empty BentoML store.
    uv = shutil.which("uv")
    assert uv, "uv not found (make setup installs it)"
    venv = tmp_path / "serve-venv"
    run([uv, "venv", "--quiet", "--python", "3.11", str(venv)], tmp_path, pipeline_env)
    sync = [uv, "pip", "sync", "--quiet", "--python", str(venv / "bin" / "python")]
    run([*sync, str(REPO / "requirements-serve.lock")], tmp_path, pipeline_env)
    fresh = {**pipeline_env, "BENTOML_HOME": str(tmp_path / "fresh_home")}
    fresh["PATH"] = f"{venv / 'bin'}:{fresh['PATH']}"
    run([str(venv / "bin" / "bentoml"), "import", str(archive)], tmp_path, fresh)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(venv / "bin" / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(cmd, tmp_path, fresh, tmp_path / "serve.log", f"{url}/readyz", 240)
    try:
        assert requests.get(f"{url}/metadata", timeout=10).json()["bento_model"] == model_tag
        resp = post_predict(url, test_images[0][:8])
        assert resp.status_code == 200
        assert_matches_evaluate(resp.json()["predictions"], evaluated, range(8))
        resp = post_image(
            url, encode(Image.fromarray(test_images[0][0]), "PNG"), "a.png", "image/png"
        )
        assert resp.status_code == 200, resp.text
        assert_matches_evaluate([resp.json()], evaluated, [0])
        page = requests.get(f"{url}/ui/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        # The service runs ONNX Runtime and never loads TensorFlow, in any of its processes.
        server = psutil.Process(proc.pid)
        mapped = {
            p.pid: Path(f"/proc/{p.pid}/maps").read_text()
            for p in [server, *server.children(recursive=True)]
        }
        assert len(mapped) >= 2  # the arbiter and at least one worker
        assert not [pid for pid, maps in mapped.items() if "tensorflow" in maps]
        assert [pid for pid, maps in mapped.items() if "onnxruntime" in maps]
    finally:
        stop(proc)
