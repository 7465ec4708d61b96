"""A small model hub on 127.0.0.1 in the Hugging Face hub's URL layout, for
tests and benchmarks of the studio's downloads through huggingface_hub
(real HTTP: the client library is the real one, only the server is small).

    /api/models/{repo}/revision/{rev}    model info with its files
    /api/models/{repo}/tree/{rev}        the file list
    /{repo}/resolve/{rev}/{file}         HEAD and GET, with Range

Errors carry the hub's X-Error-Code header (RepoNotFound,
RevisionNotFound, GatedRepo) so the library raises its own errors.
``drop_once`` names files whose first GET stops halfway (a dropped
connection); ``requests`` records what was asked. The integration stack
runs one (``stack.hub``) and points its processes' HF_ENDPOINT at it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)
    gated_token: str = ""  # a gated repo answers only this bearer token
    license: str = "apache-2.0"


@dataclass
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    bytes_per_s: float = 0  # > 0: files are sent at this pace (a browser test watches the bar move)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- answers -------------------------------------------------------
    def _error(self, handler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _repo(self, handler, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(handler, 404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
            return None
        if repo.gated_token and handler.headers.get("Authorization", "") != f"Bearer {repo.gated_token}":
            self._error(handler, 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return None
        if revision not in repo.branches and revision != repo.sha:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _json(self, handler, payload, body: bool) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def _answer(self, handler, *, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((handler.command, path, handler.headers.get("Range", "")))
        if match := re.fullmatch(r"/api/models/(.+)/(revision|tree)/([^/]+)", path):
            repo_id, what, revision = match.groups()
            if repo := self._repo(handler, repo_id, revision):
                files = [{"type": "file", "path": name, "size": len(data),
                          "oid": hashlib.sha1(data).hexdigest(),
                          **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                      "pointerSize": 130}} if name.endswith(".safetensors") else {})}
                         for name, data in repo.files.items()]
                if what == "tree":
                    self._json(handler, files, body)
                else:
                    self._json(handler, {
                        "_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                        "gated": "manual" if repo.gated_token else False, "disabled": False, "downloads": 0,
                        "likes": 0, "tags": [], "cardData": {"license": repo.license},
                        "siblings": [{"rfilename": f["path"], "size": f["size"], "blobId": f["oid"],
                                      **({"lfs": {"size": f["size"], "sha256": f["lfs"]["oid"], "pointerSize": 130}}
                                         if "lfs" in f else {})} for f in files]}, body)
            return
        if match := re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path):
            repo_id, revision, name = match.groups()
            if not (repo := self._repo(handler, repo_id, revision)):
                return
            if name not in repo.files:
                self._error(handler, 404, "EntryNotFound", f"{name} does not exist on {revision}")
                return
            self._file(handler, repo, name, body)
            return
        self._error(handler, 404, "RepoNotFound", f"no route {path}")

    def _file(self, handler, repo: Repo, name: str, body: bool) -> None:
        data = repo.files[name]
        start = 0
        if ranged := re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", "")):
            start = int(ranged.group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", repo.sha)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Accept-Ranges", "bytes")
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        if name in self.drop_once and not start:
            self.drop_once.discard(name)
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the connection drops halfway
            return
        if not self.bytes_per_s:
            handler.wfile.write(data[start:])
            return
        step = 1 << 18
        for offset in range(start, len(data), step):
            handler.wfile.write(data[offset:offset + step])
            time.sleep(step / self.bytes_per_s)


def model_repo_files(model_dir: Path) -> dict[str, bytes]:
    """A model directory's files as a repo holds them."""
    return {path.name: path.read_bytes() for path in sorted(Path(model_dir).iterdir()) if path.is_file()}
