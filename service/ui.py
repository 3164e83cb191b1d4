"""The /ui page: static files from service/ui/ (plain JavaScript: no build step, nothing fetched
from elsewhere), served by the service's own process on the app mounted at "/"."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("ui")


def mount_ui(app: FastAPI, path: str = "/ui") -> None:
    """Serve UI_DIR under `path`/ (index.html at `path`/) and redirect `path` itself there.

    Mounted inside the app at "/" rather than beside it: that app would otherwise take `path`
    (without the slash) and answer 404."""

    async def to_index() -> RedirectResponse:
        return RedirectResponse(f"{path}/")

    app.add_api_route(path, to_index, include_in_schema=False)
    app.mount(path, StaticFiles(directory=UI_DIR, html=True), name="ui")
