"""A small model hub on 127.0.0.1 in the Hugging Face hub's URL layout, for
tests and benchmarks of the studio's downloads and uploads through
huggingface_hub (real HTTP: the client library is the real one, only the
server is small).

    /api/models/{repo}[/revision/{rev}]  model info with its files
    /api/models/{repo}/tree/{rev}        the file list
    /{repo}/resolve/{rev}/{file}         HEAD and GET, with Range

The upload side (tests/hub_upload.py), what ``create_repo``, ``create_branch``, ``preupload_lfs_files``
and ``create_commit`` call (``users`` maps bearer tokens to accounts):

    GET  /api/whoami-v2                        the token's user, organisations and role
    POST /api/repos/create                     a repo in the user's or an organisation's namespace
    POST /api/models/{repo}/branch/{branch}    a branch from main's head
    POST /api/validate-yaml                    a README's metadata header
    POST /api/models/{repo}/preupload/{rev}    which files go as large files (LFS), and their oids there
    POST /{repo}.git/info/lfs/objects/batch    where to PUT each large file (none when the hub has it)
    PUT  /lfs/{oid}, POST /lfs/{oid}/verify    the large file's bytes, checked against its sha256
    POST /api/models/{repo}/commit/{rev}       the commit (NDJSON: header, files, large-file pointers)

Errors carry the hub's X-Error-Code header (RepoNotFound,
RevisionNotFound, GatedRepo) so the library raises its own errors.
``drop_once`` names files whose first GET stops halfway (a dropped
connection); ``requests`` records what was asked; ``lfs=False`` makes a hub that takes no
large files. The integration stack
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
from urllib.parse import unquote

from tests.hub_upload import LFS_SUFFIXES, HubUploads, git_blob_sha1


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)
    gated_token: str = ""  # a gated repo answers only this bearer token
    license: str = "apache-2.0"
    private: bool = False  # answers only tokens of its namespace's user or organisation members
    # Branches with their own content, made by create_branch and commits: name -> (sha, files).
    refs: dict[str, tuple[str, dict[str, bytes]]] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"branch", "sha", "summary", "paths"}, oldest first

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit sha, files) at a branch or commit, None when there is none."""
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.branches or revision == self.sha:
            return self.sha, self.files
        return next((ref for ref in self.refs.values() if ref[0] == revision), None)


@dataclass
class HubServer(HubUploads):
    repos: dict[str, Repo] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    bytes_per_s: float = 0  # > 0: files are sent (and large uploads read) at this pace (a browser test watches)
    users: dict[str, dict] = field(default_factory=dict)  # bearer token -> {"name", "orgs": {org: role}, "role"}
    lfs: bool = True
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> the uploaded large file

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

            def do_POST(self):
                hub._write(self)

            def do_PUT(self):
                hub._write(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def add_user(self, token: str, name: str, *, orgs: dict[str, str] | None = None, role: str = "write") -> None:
        """An account whose bearer ``token`` has ``role`` ("write", "read"), member of ``orgs`` {name: role}."""
        self.users[token] = {"name": name, "orgs": orgs or {}, "role": role}

    def new_repo(self, repo_id: str, *, files: dict[str, bytes], private: bool) -> Repo:
        self.repos[repo_id] = Repo(files=files, private=private, license="",
                                   sha=hashlib.sha1(f"init {repo_id}".encode()).hexdigest())
        return self.repos[repo_id]

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
        if repo.private and repo_id.split("/")[0] not in self._namespaces(handler, writing=False):
            self._error(handler, 404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
            return None
        if repo.resolve(revision) is None:
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
        path = unquote(handler.path.split("?", 1)[0])
        self.requests.append((handler.command, path, handler.headers.get("Range", "")))
        if path == "/api/whoami-v2":
            self._whoami(handler)
            return
        if match := (re.fullmatch(r"/api/models/(.+)/(revision|tree)/([^/]+)", path)
                     or re.fullmatch(r"/api/models/([^/]+/[^/]+)()()", path)):
            repo_id, what, revision = match.groups()
            revision = revision or "main"
            if repo := self._repo(handler, repo_id, revision):
                sha, repo_files = repo.resolve(revision)
                files = [{"type": "file", "path": name, "size": len(data),
                          "oid": git_blob_sha1(data),
                          **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                      "pointerSize": 130}} if name.endswith(LFS_SUFFIXES) else {})}
                         for name, data in repo_files.items()]
                if what == "tree":
                    self._json(handler, files, body)
                else:
                    self._json(handler, {
                        "_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
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
            sha, repo_files = repo.resolve(revision)
            if name not in repo_files:
                self._error(handler, 404, "EntryNotFound", f"{name} does not exist on {revision}")
                return
            self._file(handler, sha, name, repo_files[name], body)
            return
        self._error(handler, 404, "RepoNotFound", f"no route {path}")

    def _file(self, handler, sha: str, name: str, data: bytes, body: bool) -> None:
        start = 0
        if ranged := re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", "")):
            start = int(ranged.group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", sha)
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
