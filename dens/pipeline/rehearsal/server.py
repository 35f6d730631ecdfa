"""HTTP servers on 127.0.0.1, each in a thread: :func:`serve` (bytes put into a dict; the
converter and download tests) and :func:`serve_directory` (a folder's files; the rehearsal's
mirror, config ``mirror``)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    """A running server: its port and, for :func:`serve`, the files it answers with."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)

    def url(self, path: str = "") -> str:
        """``http://127.0.0.1:<port>/<path>``."""
        return f"http://127.0.0.1:{self.port}/{path}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        data = self.server.served.files.get(self.path.lstrip("/"))  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _running(httpd: ThreadingHTTPServer) -> Iterator[Served]:
    httpd.served = Served(port=httpd.server_address[1])  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd.served  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextmanager
def serve() -> Iterator[Served]:
    """A file server on 127.0.0.1 (put bytes into ``served.files[name]``)."""
    with _running(ThreadingHTTPServer(("127.0.0.1", 0), _Handler)) as served:
        yield served


@contextmanager
def serve_directory(directory: Path, port: int = 0) -> Iterator[Served]:
    """The files under ``directory`` on 127.0.0.1:``port`` (0: a free port)."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    with _running(ThreadingHTTPServer(("127.0.0.1", port), handler)) as served:
        yield served
