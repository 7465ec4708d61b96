"""A small model hub on 127.0.0.1 in the Hugging Face hub's URL layout, for
tests and benchmarks of the studio's downloads and uploads through
huggingface_hub (real HTTP: the client library is the real one, only the
server is small).

    /api/models/{repo}[/revision/{rev}]  model info with its files
    /api/models/{repo}/tree/{rev}        the file list
    /{repo}/resolve/{rev}/{file}         HEAD and GET, with Range

The upload side, what ``create_repo``, ``create_branch``, ``preupload_lfs_files``
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

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".model", ".onnx")
REGULAR_LIMIT = 10 * 10**6  # the hub's largest plain git blob
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"


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


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubServer:
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

    # --- the upload side -----------------------------------------------
    def _account(self, handler) -> dict | None:
        auth = handler.headers.get("Authorization", "")
        return self.users.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None

    def _namespaces(self, handler, *, writing: bool) -> set[str]:
        """The namespaces the request's token may read, or write to."""
        account = self._account(handler)
        if account is None or (writing and account["role"] == "read"):
            return set()
        return {account["name"], *(org for org, role in account["orgs"].items() if not writing or role != "read")}

    def _whoami(self, handler) -> None:
        account = self._account(handler)
        if account is None:
            self._error(handler, 401, "", "Invalid credentials in Authorization header")
            return
        self._json(handler, {"type": "user", "name": account["name"], "fullname": account["name"],
                             "orgs": [{"type": "org", "name": org, "roleInOrg": role}
                                      for org, role in account["orgs"].items()],
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "studio", "role": account["role"]}}}, True)

    def _body(self, handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += handler.rfile.read(size)
                handler.rfile.readline()
            handler.rfile.readline()
            return data
        length, data = int(handler.headers.get("Content-Length") or 0), b""
        while len(data) < length:  # paced like a slow link when bytes_per_s is set
            data += handler.rfile.read(min(length - len(data), 1 << 18))
            if self.bytes_per_s:
                time.sleep(min(length, 1 << 18) / self.bytes_per_s)
        return data

    def _writable(self, handler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if self._account(handler) is None:
            self._error(handler, 401, "", "Invalid credentials in Authorization header")
        elif repo_id.split("/")[0] not in self._namespaces(handler, writing=True):
            self._error(handler, 403, "", f"You don't have the rights to write to {repo_id}")
        elif repo is None:
            self._error(handler, 404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        else:
            return repo
        return None

    def _write(self, handler) -> None:
        path = unquote(handler.path.split("?", 1)[0])
        self.requests.append((handler.command, path, ""))
        body = self._body(handler)
        routes = [(r"/api/repos/create", self._create_repo), (r"/api/validate-yaml", self._validate_yaml),
                  (r"/api/models/(.+)/branch/([^/]+)", self._create_branch),
                  (r"/api/models/(.+)/preupload/([^/]+)", self._preupload),
                  (r"/api/models/(.+)/commit/([^/]+)", self._commit),
                  (r"/(.+)\.git/info/lfs/objects/batch", self._lfs_batch),
                  (r"/lfs/([0-9a-f]{64})", self._lfs_put), (r"/lfs/([0-9a-f]{64})/verify", self._lfs_verify)]
        for pattern, route in routes:
            if match := re.fullmatch(pattern, path):
                route(handler, body, *match.groups())
                return
        self._error(handler, 404, "RepoNotFound", f"no route {handler.command} {path}")

    def _create_repo(self, handler, body: bytes) -> None:
        payload = json.loads(body)
        account = self._account(handler)
        if account is None:
            self._error(handler, 401, "", "Invalid credentials in Authorization header")
            return
        repo_id = f"{payload.get('organization') or account['name']}/{payload['name']}"
        if repo_id in self.repos:
            self._error(handler, 409, "", "You already created this model repo")
            return
        if repo_id.split("/")[0] not in self._namespaces(handler, writing=True):
            self._error(handler, 403, "", f"You don't have the rights to create a model under {repo_id}")
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.repos[repo_id] = Repo(files={".gitattributes": GITATTRIBUTES}, private=private, license="",
                                   sha=hashlib.sha1(f"init {repo_id}".encode()).hexdigest())
        self._json(handler, {"url": f"http://{handler.headers['Host']}/{repo_id}", "name": repo_id}, True)

    def _create_branch(self, handler, body: bytes, repo_id: str, branch: str) -> None:
        if (repo := self._writable(handler, repo_id)) is None:
            return
        if repo.resolve(branch) is not None:
            self._error(handler, 409, "", f"Reference already exists: refs/heads/{branch}")
            return
        repo.refs[branch] = (repo.sha, dict(repo.files))
        self._json(handler, {}, True)

    def _validate_yaml(self, handler, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        errors = []
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            meta, errors = {}, [{"message": f"invalid YAML: {exc}"}]
        base = (meta or {}).get("base_model")
        for ref in [base] if isinstance(base, str) else base or []:
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(ref)):  # the hub checks base_model names a model
                errors.append({"message": f'"base_model" must be a model id on the hub, got "{ref}"'})
        payload = json.dumps({"errors": errors, "warnings": []}).encode()
        handler.send_response(400 if errors else 200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _preupload(self, handler, body: bytes, repo_id: str, revision: str) -> None:
        if (repo := self._writable(handler, repo_id)) is None:
            return
        if (ref := repo.resolve(revision)) is None:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        answers = []
        for entry in json.loads(body)["files"]:
            name, sample = entry["path"], base64.b64decode(entry["sample"])
            large = self.lfs and (name.endswith(LFS_SUFFIXES) or entry["size"] > REGULAR_LIMIT or b"\0" in sample)
            existing = ref[1].get(name)
            oid = None if existing is None else (hashlib.sha256(existing).hexdigest() if large
                                                 else git_blob_sha1(existing))
            answers.append({"path": name, "uploadMode": "lfs" if large else "regular", "shouldIgnore": False,
                            "oid": oid})
        self._json(handler, {"files": answers}, True)

    def _lfs_batch(self, handler, body: bytes, repo_id: str) -> None:
        if self._writable(handler, repo_id) is None:
            return
        host = f"http://{handler.headers['Host']}"
        objects = []
        for obj in json.loads(body)["objects"]:
            if obj["oid"] in self.lfs_objects:  # the hub has these bytes: nothing to send
                objects.append({"oid": obj["oid"], "size": obj["size"]})
            else:
                objects.append({"oid": obj["oid"], "size": obj["size"], "actions": {
                    "upload": {"href": f"{host}/lfs/{obj['oid']}"},
                    "verify": {"href": f"{host}/lfs/{obj['oid']}/verify"}}})
        self._json(handler, {"transfer": "basic", "objects": objects}, True)

    def _lfs_put(self, handler, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(handler, 400, "", f"the uploaded bytes do not hash to {oid}")
            return
        self.lfs_objects[oid] = body
        self._json(handler, {}, True)

    def _lfs_verify(self, handler, body: bytes, oid: str) -> None:
        payload = json.loads(body)
        if oid not in self.lfs_objects or len(self.lfs_objects[oid]) != payload["size"]:
            self._error(handler, 404, "", f"large file {oid} was not uploaded")
            return
        self._json(handler, {}, True)

    def _commit(self, handler, body: bytes, repo_id: str, revision: str) -> None:
        if (repo := self._writable(handler, repo_id)) is None:
            return
        if (ref := repo.resolve(revision)) is None or revision not in (*repo.branches, *repo.refs):
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = dict(ref[1])
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                data = base64.b64decode(value["content"])
                if len(data) > REGULAR_LIMIT:
                    self._error(handler, 400, "", f"{value['path']} is over 10 MB: it must be a large (LFS) file")
                    return
                files[value["path"]] = data
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    self._error(handler, 400, "", f"large file {value['path']} ({value['oid']}) was not uploaded")
                    return
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
        sha = hashlib.sha1(f"{ref[0]} {header['summary']} {len(repo.commits)}".encode()).hexdigest()
        if revision in repo.branches:
            repo.sha, repo.files = sha, files
        else:
            repo.refs[revision] = (sha, files)
        repo.commits.append({"branch": revision, "sha": sha, "summary": header["summary"],
                             "paths": [line["value"]["path"] for line in lines if line["key"] != "header"]})
        self._json(handler, {"success": True, "commitOid": sha,
                             "commitUrl": f"http://{handler.headers['Host']}/{repo_id}/commit/{sha}"}, True)


def model_repo_files(model_dir: Path) -> dict[str, bytes]:
    """A model directory's files as a repo holds them."""
    return {path.name: path.read_bytes() for path in sorted(Path(model_dir).iterdir()) if path.is_file()}
