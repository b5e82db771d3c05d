"""The local server of ``rstar view --port``: the page and two JSON endpoints, on 127.0.0.1 only.

* ``GET /`` — the page;
* ``GET /api/index?version=V`` — the sources and the problem list (`TreeStore.index`), or
  ``{"version": V, "unchanged": true}`` when nothing changed since version ``V``: the page polls it;
* ``GET /api/tree?source=KEY&id=ID`` — one tree, with each node's outcome and the chosen path.

Requests whose ``Host`` is not this server's own address are refused, so that a web page elsewhere cannot read
the trees through a DNS name pointed at 127.0.0.1.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rstar_view.page import render_page
from rstar_view.trees import TreeStore

HOST = "127.0.0.1"
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:"
)
"""Nothing but the page's own inline script and style, and requests to this server (the page carries it too)."""


class ViewServer(ThreadingHTTPServer):
    """Serves one `TreeStore`; ``port`` 0 picks a free port (read it from ``server_port``)."""

    daemon_threads = True

    def __init__(self, store: TreeStore, port: int) -> None:
        super().__init__((HOST, port), _Handler)
        self.store = store
        self.page = render_page(str(store.target), {"live": True}).encode("utf-8")
        self.hosts = {f"{HOST}:{self.server_port}", f"localhost:{self.server_port}"}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}/"


def report_page(report: Path) -> bytes:
    """The folder's report (`rstar report`) as a page: its plot, then its Markdown as text."""
    text = html.escape(report.read_text(encoding="utf-8"))
    has_plot = report.with_suffix(".png").is_file()
    plot = '<img src="report.png" alt="report plot" style="max-width:100%">' if has_plot else ""
    page = f"<!doctype html><meta charset=utf-8><title>rstar report</title>{plot}<pre>{text}</pre>"
    return page.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer

    def do_GET(self) -> None:
        if self.headers.get("Host") not in self.server.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"unknown host", "text/plain; charset=utf-8")
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        store = self.server.store
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/api/index":
            version = store.refresh()
            if query.get("version", [""])[0] == version:
                self._json({"version": version, "unchanged": True})
            else:
                self._json(store.index())
        elif url.path == "/api/tree":
            tree = store.tree(query.get("source", [""])[0], query.get("id", [""])[0])
            if tree is None:
                self._json({"error": "no such tree"}, HTTPStatus.NOT_FOUND)
            else:
                self._json(tree)
        elif url.path == "/report" and (report := store.report()) is not None:
            self._send(HTTPStatus.OK, report_page(report), "text/html; charset=utf-8")
        elif (
            url.path == "/report.png"
            and (report := store.report()) is not None
            and (png := report.with_suffix(".png")).is_file()
        ):
            self._send(HTTPStatus.OK, png.read_bytes(), "image/png")
        else:
            self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the page polls every two seconds."""
