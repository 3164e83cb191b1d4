"""What the Bento's image must be, checked on a Dockerfile made as `bentoml build` makes it
(tests/test_serving_image.py) and on a real build (tests/test_bento_build.py)."""

from __future__ import annotations

import re

from conftest import REPO

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
