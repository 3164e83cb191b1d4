"""The container image `bentoml containerize` builds for the service: `python:3.11-slim`, the
serving lock, and no compiler or git.

BentoML's distro presets (`debian`, `alpine`, `ubi8`, `amazonlinux`: CONTAINER_METADATA in
bentoml/_internal/container/frontend/dockerfile) each put a C toolchain and git into every image
(`build-essential` and `git` on Debian: nearly half of the image; docs/deploy.md, "The image"),
for Python packages that build from source. The service has none: every package of requirements-serve.lock is a
wheel. `Image.__attrs_post_init__` adds the preset's install command only when `distro` is one of
those presets, so an Image with its own base image and a distro that is none of them gets
BentoML's Dockerfile (the `bentoml` user, uv, the lock) without it. bentofile.yaml's `docker:`
and `python:` options are merged into this Image with `attrs.evolve`, which runs that check
again: so bentofile.yaml must not set `docker.distro` (its default would bring the tools back).

What BentoML's Dockerfile needs of the base image, all in `python:3.11-slim` (Debian's
essential and required packages, plus ca-certificates): bash (env/docker/entrypoint.sh),
groupadd/useradd (the `bentoml` user, uid 1034, that deploy/k8s runs as), ca-certificates (pip
and uv reaching PyPI), Python 3.11 and pip (uv's venv, `pip install uv`).

`--only-binary :all:` goes first into the Bento's requirements.txt (the serving lock, with its
hashes, follows): a package that has no wheel fails the image build, naming it, instead of
trying to compile without a compiler. A system package the service comes to need is a command
of its own, ahead of `.python_packages` below (with no preset distro, `Image.system_packages`
refuses), e.g. `.run("apt-get update && apt-get install -y --no-install-recommends libgomp1
&& rm -rf /var/lib/apt/lists/*")`.
"""

from __future__ import annotations

import bentoml

BASE_IMAGE = "python:3.11-slim"
NO_DISTRO_PRESET = "none"  # not a key of BentoML's CONTAINER_METADATA: no packages of its own

SERVING_IMAGE = bentoml.images.Image(
    base_image=BASE_IMAGE, distro=NO_DISTRO_PRESET, python_version="3.11"
).python_packages("--only-binary :all:")
