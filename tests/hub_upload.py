"""The upload side of tests/hub_server.py's hub: what huggingface_hub's
``whoami``, ``create_repo``, ``create_branch``, ``preupload_lfs_files`` and
``create_commit`` call, answered as the Hugging Face hub answers them (see
that module's docstring for the routes). Mixed into HubServer, whose
``repos``, ``users``, ``lfs`` and ``lfs_objects`` it reads and writes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".model", ".onnx")
REGULAR_LIMIT = 10 * 10**6  # the hub's largest plain git blob
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubUploads:
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

    def _writable(self, handler, repo_id: str):
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
        self.new_repo(repo_id, files={".gitattributes": GITATTRIBUTES}, private=private)
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
