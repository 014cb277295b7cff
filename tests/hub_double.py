"""A local stand-in for the Hugging Face Hub's file downloads (``HF_ENDPOINT``), serving bundle folders as model
repositories: ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with the headers huggingface_hub reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``), ``Range`` requests for resumed downloads, and the Hub's error codes.
Faults on demand: a file served with other bytes (``tampered``), or cut off halfway (``cut``: how many more times).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubDouble:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.tampered: set[tuple[str, str]] = set()
        self.cut: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def content(self, repo: str, file: str) -> bytes | None:
        path = self.repos[repo] / file
        if not path.is_file():
            return None
        data = path.read_bytes()
        if (repo, file) in self.tampered:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    def ranges(self, file: str) -> list[str]:
        """The Range headers the downloads of ``file`` sent."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith("/" + file) and r]


def _handler(hub: HubDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _error(self, code: str, status: int = 404) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            parts = self.path.split("?")[0].lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error("NotFound")
            repo, revision, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo not in hub.repos:
                return self._error("RepoNotFound", 401)  # the Hub answers 401 for a repo it does not show
            if revision not in ("main", hub.commit(repo)):
                return self._error("RevisionNotFound")
            data = hub.content(repo, file)
            if data is None:
                return self._error("EntryNotFound")
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if hub.cut.get((repo, file), 0) > 0:  # half of what is left, then the connection drops
                hub.cut[(repo, file)] -= 1
                self.wfile.write(data[start : start + (len(data) - start) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    return Handler
