"""A local stand-in for the Hugging Face Hub's file downloads (``HF_ENDPOINT``), serving bundle folders as model
repositories: ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with the headers huggingface_hub reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``), ``Range`` requests for resumed downloads, and the Hub's error codes.
Faults on demand: a file served with other bytes (``tampered``), or cut off halfway (``cut``: how many more times).
"""

from __future__ import annotations

import hashlib
import io
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
        self._etags: dict = {}
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

    def etag(self, repo: str, file: str) -> str:
        """The sha256 of the bytes served for ``file`` (as the Hub's ETag of a large file), computed once."""
        key = (repo, file, (repo, file) in self.tampered)
        if key not in self._etags:
            digest = hashlib.sha256()
            with self.open(repo, file) as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            self._etags[key] = digest.hexdigest()
        return self._etags[key]

    def open(self, repo: str, file: str):
        """The bytes served for ``file``: the file's, or with its first byte changed when it is ``tampered``."""
        f = open(self.repos[repo] / file, "rb")
        if (repo, file) not in self.tampered:
            return f
        with f:
            data = bytearray(f.read())
        data[0] ^= 1
        return io.BytesIO(bytes(data))

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
            if not (hub.repos[repo] / file).is_file():
                return self._error("EntryNotFound")
            size = (hub.repos[repo] / file).stat().st_size
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("ETag", f'"{hub.etag(repo, file)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if body:
                self._send(repo, file, start, size)

        def _send(self, repo: str, file: str, start: int, size: int) -> None:
            cut = hub.cut.get((repo, file), 0) > 0  # then half of what is left, and the connection drops
            left = (size - start) // 2 if cut else size - start
            with hub.open(repo, file) as f:
                f.seek(start)
                while left > 0 and (block := f.read(min(left, 1 << 20))):
                    self.wfile.write(block)
                    left -= len(block)
            if cut:
                hub.cut[(repo, file)] -= 1
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    return Handler
