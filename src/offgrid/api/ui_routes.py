"""The browser dashboard at ``/ui``: static files shipped in the package (``offgrid/web``),
no build step, nothing fetched from anywhere else. The page's Content-Security-Policy
allows only this origin, so even a script that slipped into the page could not load
anything or send anything elsewhere."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

__all__ = ["WEB", "router", "static_files"]

WEB = Path(__file__).resolve().parent.parent / "web"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui")
async def dashboard() -> FileResponse:
    return FileResponse(
        WEB / "index.html",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


def static_files() -> StaticFiles:
    """The dashboard's scripts and styles, under ``/ui/static``."""
    return StaticFiles(directory=WEB)
