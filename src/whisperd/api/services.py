"""How the app reaches its services: one :class:`AppServices`, made by ``create_app`` and
filled by its lifespan, is all the app keeps on ``app.state``."""

from __future__ import annotations

from starlette.applications import Starlette

from whisperd.errors import ServiceUnavailableError
from whisperd.metrics import Metrics
from whisperd.services import Lifecycle, Services
from whisperd.settings import Settings


class AppServices:
    """The app's settings, lifecycle and metrics (there from the start: the middleware and the
    server need them first) and, while the lifespan runs, the :class:`Services` it built."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.current: Services | None = None

    @property
    def services(self) -> Services:
        """The running services; 503 before the lifespan has started them."""
        if self.current is None:
            raise ServiceUnavailableError("The server is starting; retry shortly.", code="starting")
        return self.current


def app_services(app: Starlette) -> AppServices:
    """The :class:`AppServices` of an app built by ``create_app``."""
    held = app.state.services
    assert isinstance(held, AppServices)
    return held


def services_of(app: Starlette) -> Services:
    """The running services of an app built by ``create_app`` (503 before it has started)."""
    return app_services(app).services
