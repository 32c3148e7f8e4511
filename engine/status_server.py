"""Serve an engine's metrics, health, readiness and status page over HTTP.

Endpoints:

    /metrics      Prometheus text format
    /healthz      200 while the processing loop reports, 503 once it stalls;
                  JSON that also tells whether the rules are stale
    /readyz       200 once rules are loaded and backends answered, 503 with
                  the reason before that
    /status.json  everything the status page shows
    /             the status page

The server runs in daemon threads beside the engine and only reads the
`Observability` the engine thread writes, so a slow scrape never slows
the engine down. It binds to the loopback interface unless told otherwise.
"""

from __future__ import annotations

import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from engine.observability import Observability
from engine.status_page import render_status_page
from infra.closing import Started

__all__ = ["StatusServer"]

log = structlog.get_logger(__name__)

# How often the serving thread checks for `close`; shorter means a faster
# shutdown for a few more wake-ups per second of an idle thread.
_SHUTDOWN_POLL_SECONDS = 0.05
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


class StatusServer(Started):
    """Run the HTTP endpoints of one `Observability` in a background thread.

    Args:
        observability: What the endpoints report.
        host: The address to bind; the loopback interface by default.
        port: The port to bind; 0 picks a free one (see `port`).
    """

    def __init__(
        self, observability: Observability, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._httpd = _Server((host, port), _StatusHandler)
        self._httpd.observability = observability
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """Return the port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Return the server's base URL, without a trailing slash."""
        host = str(self._httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(_SHUTDOWN_POLL_SECONDS,),
            name="status-server",
            daemon=True,
        )
        self._thread.start()
        log.info("status server started", url=self.url)

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
            log.info("status server stopped", url=self.url)
        self._httpd.server_close()


class _Server(ThreadingHTTPServer):
    # A request thread must never keep the process alive at exit.
    daemon_threads = True
    observability: Observability


class _StatusHandler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        try:
            self._route(urlsplit(self.path).path)
        except Exception as error:  # one bad request must not stop the server
            log.warning("status request failed", path=self.path, error=repr(error))
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _JSON, b'{"error":"internal"}')

    def _route(self, path: str) -> None:
        observability = self.server.observability
        if path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, observability.metrics_text())
        elif path == "/healthz":
            health = observability.health()
            self._send_json(health, ok=health["alive"])
        elif path == "/readyz":
            readiness = observability.readiness()
            self._send_json(readiness, ok=readiness["ready"])
        elif path == "/status.json":
            self._send_json(observability.status(), ok=True)
        elif path == "/":
            self._send_page(observability)
        else:
            self._send_json({"error": f"No page is at {path}."}, ok=False, missing=True)

    def _send_page(self, observability: Observability) -> None:
        nonce = secrets.token_urlsafe(16)
        page = render_status_page(observability.status(), nonce)
        # The page needs only its own inline style and script and
        # /status.json; anything else a rule value might smuggle in is refused.
        policy = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; "
            f"script-src 'nonce-{nonce}'; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        self._send(HTTPStatus.OK, _HTML, page.encode(), policy)

    def _send_json(self, data: Any, ok: bool, missing: bool = False) -> None:
        if ok:
            status = HTTPStatus.OK
        else:
            status = HTTPStatus.NOT_FOUND if missing else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, _JSON, orjson.dumps(data))

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        policy: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if policy is not None:
            self.send_header("Content-Security-Policy", policy)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # The page polls every two seconds and Prometheus scrapes often: an
        # access log line per request would drown the engine's own logs.
        return
