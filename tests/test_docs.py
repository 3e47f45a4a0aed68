"""/docs and /redoc render in headless Chromium with no network beyond the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from whisperd.api import create_app
from whisperd.engine import Transcriber

from browser import offline_page
from support import make_settings, running_app

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, engine: Transcriber
) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("docs"), model_cache)
    with running_app(create_app(settings, engine=engine)) as url:
        yield url


def test_swagger_ui_renders_offline(base_url: str) -> None:
    with offline_page() as (page, blocked):
        page.goto(f"{base_url}/docs")
        page.wait_for_function("document.querySelectorAll('.opblock').length >= 8", timeout=30_000)
        assert "Transcribe audio" in page.locator("#swagger-ui").inner_text()
        assert blocked == []


def test_redoc_renders_offline(base_url: str) -> None:
    with offline_page() as (page, blocked):
        page.goto(f"{base_url}/redoc")
        page.wait_for_selector("h2:has-text('Transcribe audio')", timeout=30_000)
        # Redoc's footer links its vendor logo from a CDN; a missing image changes nothing else.
        assert [(kind, url) for kind, url in blocked if kind != "image"] == []
