"""Who may read the Prometheus metrics (`Settings.metrics_access`).

- `open`: GET /metrics on the API port answers anyone who reaches it (Prometheus' usual scrape;
  fine when the port is private, as the default host 127.0.0.1 is);
- `admin`: GET /metrics needs the admin key as a bearer (Prometheus' `authorization` setting);
- `port`: /metrics is not on the API port at all (404 there, saying where it is); a separate
  listener serves it on `metrics_host:metrics_port`, for a network only the scraper reaches.

The separate listener is prometheus_client's own `start_http_server` (a thread), over the same
registry the API route renders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.settings import Settings

log = logging.getLogger("greengate")


def check_route(settings: Settings, principal: Principal | None) -> None:
    """Raise unless the API port's /metrics may answer this caller (`principal` is the caller
    when access is `admin`, else not asked for)."""
    if settings.metrics_access == "port":
        raise GatewayError(404, f"/metrics is served on its own port "
                           f"({settings.metrics_host}:{settings.metrics_port}), not here "
                           "(GREENGATE_METRICS_ACCESS=port).", code="metrics_elsewhere")
    if settings.metrics_access == "admin" and (principal is None or not principal.is_admin):
        raise GatewayError(403, "/metrics needs the admin key (GREENGATE_METRICS_ACCESS=admin).",
                           code="admin_only")


@dataclass
class MetricsListener:
    """The `port` mode's listener: started with the runtime, stopped with it."""

    server: Any
    thread: Any

    @classmethod
    def start(cls, settings: Settings, registry: CollectorRegistry) -> MetricsListener | None:
        if settings.metrics_access != "port":
            return None
        try:
            server, thread = start_http_server(settings.metrics_port, settings.metrics_host,
                                               registry=registry)
        except OSError as e:
            raise RuntimeError(f"cannot serve /metrics on {settings.metrics_host}:"
                               f"{settings.metrics_port} (GREENGATE_METRICS_PORT): {e}") from e
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
