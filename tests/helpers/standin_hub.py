"""A stand-in for the Hugging Face Hub on 127.0.0.1 (the real Hub is unreachable from the tests).

It serves local model directories as model repositories through the endpoints that
``huggingface_hub`` uses to fetch a snapshot (repository info, tree listing, file metadata and
download) and records every request, so a test can see who fetched what how often. It speaks
the protocol only as far as fetching public files needs; the real loading code is unchanged.

    with standin_hub({"standin/tiny": path}) as (endpoint, requests):
        ...  # HF_ENDPOINT=endpoint
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Repo:
    def __init__(self, directory: Path):
        self.files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
        self.commit = _sha1(b"".join(_sha1(b).encode() for b in self.files.values()))


def _handler(repos: dict[str, _Repo], requests: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, head=False):
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

        def _route(self, head: bool):
            path = self.path.split("?")[0]
            requests.append((self.command, path))
            for repo_id, repo in repos.items():
                api = f"/api/models/{repo_id}/"
                if path.startswith(api + "revision/"):
                    siblings = [{"rfilename": name} for name in repo.files]
                    return self._json(
                        {"id": repo_id, "sha": repo.commit, "siblings": siblings, "private": False}, head
                    )
                if path.startswith(api + "tree/"):
                    tree = [
                        {"type": "file", "path": name, "size": len(data), "oid": _sha1(data)}
                        for name, data in repo.files.items()
                    ]
                    return self._json(tree, head)
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix) :].split("/", 1)[1]
                    if name not in repo.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    data = repo.files[name]
                    headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{_sha1(data)}"'}
                    return self._send(200, data, headers, head)
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

    return Handler


@contextlib.contextmanager
def standin_hub(repos: dict[str, Path]):
    """Serve ``{repo_id: directory}``; yields (endpoint URL, list of (method, path) requests)."""
    requests: list = []
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _handler({k: _Repo(v) for k, v in repos.items()}, requests)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
