"""`bentoml build` of the pipeline's champion: the Bento packs the model, the pipeline's core and
the serving lock; exported, it serves from an empty store in a venv that holds the serving lock
alone, on ONNX Runtime, without TensorFlow."""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from bento_image import assert_slim_serving_image
from conftest import BIN, REPO, free_port, run, start_server, stop
from PIL import Image
from service_fixtures import assert_matches_evaluate, encode, post_image, post_predict

pytest_plugins = ["service_fixtures"]  # champion, test_images, evaluated
pytestmark = pytest.mark.e2e


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
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert_slim_serving_image(dockerfile, requirements)  # no compiler or git, the uid, the lock
    # the image runs as the non-root user from its entry point on
    assert dockerfile.rindex("\nUSER bentoml") < re.search(r"^ENTRYPOINT", dockerfile, re.M).start()
    # The image installs exactly the serving lock.
    pinned = set(re.findall(r"^([\w.-]+==\S+)", requirements, re.M))  # BentoML adds its own pin
    assert pinned == set(
        re.findall(r"^([\w.-]+==\S+)", (REPO / "requirements-serve.lock").read_text(), re.M)
    )

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
