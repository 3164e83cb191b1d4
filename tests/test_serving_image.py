"""The serving image from the source: the serving lock is requirements.lock cut to what the service
needs, and the Dockerfile `bentoml build` writes installs it on python:3.11-slim, without build
tools, as the `bentoml` user."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from bento_image import assert_slim_serving_image, hashed_pins
from conftest import REPO

pytestmark = pytest.mark.unit


def test_the_serving_lock_is_requirements_lock_cut_to_what_the_service_needs():
    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([\w.-]+)==([^\s\\]+)", path.read_text(), re.M))

    locked, serving = pins(REPO / "requirements.lock"), pins(REPO / "requirements-serve.lock")
    assert {name: locked.get(name) for name in serving} == serving  # same version everywhere
    # every package of the image with the SHA-256 of its files: a changed upload fails the build
    text = (REPO / "requirements-serve.lock").read_text()
    hashed = hashed_pins(text)
    assert all(hashed.values()), [pin for pin, hashes in hashed.items() if not hashes]
    # one entry per package: none pinned twice
    assert len(re.findall(r"^[\w.-]+==", text, re.M)) == len(hashed) == len(serving)
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
