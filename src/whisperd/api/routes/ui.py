"""The web page: ``GET /`` and its assets under ``/ui/``, plain files from ``whisperd/static``.

The page is static HTML, CSS and JavaScript (no build step, nothing fetched from a CDN); it
talks to the same API as any client. Its script is ES modules, one per panel, that
``app.js`` imports: any ``.js`` file in the folder is served, as ``text/javascript``, the
type a browser demands of a module. Both routes are public (see ``middleware``): the page
asks for an API key when the API answers 401.

Query parameters the page reads: ``?job_threshold_seconds=N`` and ``?job_threshold_mb=N``
lower or raise the length and size above which a file runs as a background job (defaults
600 s and 25 MB, also on ``<body data-job-threshold-seconds/-mb>``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from whisperd.errors import NotFoundError, shown

router = APIRouter(include_in_schema=False)

# The page changes with the package; make the browser check instead of guessing (ETag).
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _static_dir() -> Path:
    return Path(str(resources.files("whisperd") / "static"))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, say
        return False


def _file(name: str) -> FileResponse:
    # ``name`` holds no "/" (the path converter stops there): it can only name a file in
    # the static folder itself; dot files and unknown types stay hidden.
    path = _static_dir() / name
    media_type = _TYPES.get(path.suffix)
    if name.startswith(".") or media_type is None or not _is_file(path):
        raise NotFoundError(f"No file {shown(name)} in the web page's assets.")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    """The page itself."""
    return _file("index.html")


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> FileResponse:
    """A stylesheet, script or icon of the page."""
    return _file(name)
