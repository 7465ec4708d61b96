"""Publishing a folder to a Hugging Face hub (huggingface.co, or a self-hosted
hub behind ``HF_ENDPOINT``) through ``huggingface_hub``'s upload API.

Everything that can refuse is asked before a byte of a file moves: the token
exists and may write (``whoami``), the repo's namespace is the token owner's or
one of their organisations where they may write, no file is over the Hub's
limits (50 GB a file; 10 MB for a file the hub will not take as a large file).
Then the repo is created (or reused: a re-publish is a new commit), the branch
made when it is new, the large files uploaded one at a time and the commit
made. Files already on the hub with the same content are not sent again.

Each file is handed to the library as a file object of ours, so every chunk
the library reads reports bytes (``on_bytes``) and is where a cancel stops the
upload (``PublishCancelled``). The library sends file objects over the LFS
path, which every hub accepts, rather than Xet.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuning.errors import TuningError
from tuning.hub_card import CardFacts, hub_card

HUB_FILE_LIMIT = 50 * 10**9  # the Hub's largest file (docs: "Per file: 50GB max")
REGULAR_FILE_LIMIT = 10 * 10**6  # the Hub refuses a file over 10 MB committed as a plain git blob
SKIPPED = (".", "__pycache__")  # hidden files and caches stay home
STUDIO_ONLY = ("quantize_report.json",)  # the card says what it holds


class _XetFallbackIsMeant(logging.Filter):
    """The library warns each time it takes file objects over LFS instead of Xet; here that is the design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not supported by Xet Storage" not in record.getMessage()


logging.getLogger("huggingface_hub._commit_api").addFilter(_XetFallbackIsMeant())


class PublishCancelled(Exception):
    """The user cancelled: nothing was committed (uploaded large files stay on the hub, unreferenced)."""


@dataclass
class PublishResult:
    repo_id: str
    branch: str
    commit_sha: str
    commit_url: str
    repo_url: str
    uploaded: list[str] = field(default_factory=list)  # paths sent in this commit
    unchanged: list[str] = field(default_factory=list)  # paths the hub already had with this content


class _Reader(io.BufferedIOBase):
    """A file (or bytes) the library reads: reports how far each read got and stops when cancelled."""

    def __init__(self, source: Path | bytes, on_read: Callable[[int], None], cancelled: Callable[[], bool]):
        self._file = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
        self._on_read, self._cancelled = on_read, cancelled

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._cancelled():
            raise PublishCancelled()
        data = self._file.read(-1 if size is None else size)
        self._on_read(self._file.tell())
        return data

    read1 = read

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


def folder_files(folder: Path) -> dict[str, Path]:
    """The folder's files by their path in the repo."""
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*"))
            if path.is_file() and not any(part.startswith(SKIPPED) for part in path.relative_to(folder).parts)}


def repo_files(folder: Path, *, facts: CardFacts, repo_id: str) -> dict[str, Path | bytes]:
    """What a repo of this artifact holds, in the layout its loaders expect:
    an adapter's files (its config naming the base model's hub id, so
    ``AutoPeftModelForCausalLM.from_pretrained(repo)`` finds the base), a
    model's folder, or for a GGUF export the .gguf files alone (llama.cpp and
    Ollama pick them from the repo); with the card as README.md."""
    files: dict[str, Path | bytes] = dict(folder_files(folder))
    readme = files.pop("README.md").read_text() if "README.md" in files else ""
    for name in STUDIO_ONLY:
        files.pop(name, None)
    if facts.format == "gguf" or any(name.endswith(".gguf") for name in files):
        files = {name: path for name, path in files.items() if name.endswith(".gguf")}
    if facts.kind == "adapter" and facts.base_model and isinstance(files.get("adapter_config.json"), Path):
        config = json.loads(files["adapter_config.json"].read_text())
        config["base_model_name_or_path"] = facts.base_model  # not the path of the studio's copy
        files["adapter_config.json"] = json.dumps(config, indent=2).encode()
    files["README.md"] = hub_card(readme, facts=facts, repo_id=repo_id, files=list(files)).encode()
    return files


def write_refusal(whoami: dict, repo_id: str) -> str:
    """Why the token that ``whoami`` describes may not write ``repo_id`` ("" when it may)."""
    user = whoami.get("name", "?")
    token = (whoami.get("auth") or {}).get("accessToken") or {}
    namespace = repo_id.split("/")[0]
    role = token.get("role")
    if role == "read":
        return (f"the token '{token.get('displayName', '')}' of {user} is read-only; make one with write access "
                f"on the hub's token settings and save it as a team secret")
    orgs = {org.get("name"): org.get("roleInOrg", "") for org in whoami.get("orgs") or []}
    if namespace != user and namespace not in orgs:
        return (f"{repo_id} belongs to '{namespace}', and this token is {user}'s"
                f"{' (member of ' + ', '.join(sorted(orgs)) + ')' if orgs else ''}; publish under {user}/… "
                f"or an organisation {user} may write to")
    if namespace in orgs and orgs[namespace] == "read":
        return f"{user} may only read in the organisation '{namespace}'; ask one of its admins for write access"
    if role == "fineGrained":
        scoped = (token.get("fineGrained") or {}).get("scoped") or []
        if not any((entry.get("entity") or {}).get("name") in (namespace, repo_id)
                   and "repo.write" in (entry.get("permissions") or []) for entry in scoped):
            return (f"the fine-grained token '{token.get('displayName', '')}' has no write access to "
                    f"'{namespace}'; add \"Write access to contents/settings of all repos\" for it")
    return ""


def _hub_error(exc: Exception, repo_id: str) -> TuningError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return TuningError("the hub did not accept the access token (expired or revoked?); save a new one")
    if status == 403:
        return TuningError(f"the hub refused to let this token write {repo_id}: {exc}")
    if isinstance(exc, HfHubHTTPError):
        return TuningError(f"the hub refused the upload to {repo_id}: {exc}")
    return TuningError(f"the hub could not be reached for {repo_id}: {exc}")


def _cancelled_in(exc: BaseException | None) -> bool:
    """Whether a PublishCancelled is behind ``exc`` (the library wraps what our reader raised)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, PublishCancelled):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


RepoFiles = dict[str, Path | bytes]  # path in the repo -> a local file, or the bytes to write


def publish_folder(files: RepoFiles | Callable[[str], RepoFiles], *, repo_id: str, token: str | None,
                   endpoint: str | None = None,
                   branch: str = "main", private: bool = False, commit_message: str,
                   on_phase: Callable[[str], None] = lambda phase: None,
                   on_bytes: Callable[[int, int], None] = lambda done, total: None,
                   cancelled: Callable[[], bool] = lambda: False) -> PublishResult:
    """Commit ``files`` (path in the repo → a local file or the bytes to write;
    or a function of the repo id making them) to ``repo_id`` on ``branch``.
    ``repo_id`` without an owner goes under the token's user. ``on_bytes(done, total)`` hears the bytes read for the
    upload; ``cancelled`` is asked with every chunk. Raises TuningError with
    what to do when the hub or the token refuses."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub._commit_api import _fetch_upload_modes  # the preupload answer, before any upload
    from huggingface_hub.errors import HfHubHTTPError

    if not token:
        raise TuningError("publishing needs a hub access token with write access; save one as a team secret")
    api = HfApi(endpoint=endpoint, token=token)
    reached: dict[str, int] = {}  # the furthest each file was read: a retried upload reads again

    def read_to(name: str) -> Callable[[int], None]:
        def on_read(position: int) -> None:
            reached[name] = max(reached.get(name, 0), position)
            on_bytes(sum(reached.values()), total)
        return on_read

    try:
        on_phase("Checking the token and the repo")
        whoami = api.whoami()
        repo_id = repo_id if "/" in repo_id else f"{whoami['name']}/{repo_id}"
        if refusal := write_refusal(whoami, repo_id):
            raise TuningError(refusal)
        files = files(repo_id) if callable(files) else files
        sizes = {name: len(source) if isinstance(source, bytes) else source.stat().st_size
                 for name, source in files.items()}
        if too_big := [name for name, size in sizes.items() if size > HUB_FILE_LIMIT]:
            raise TuningError(f"{too_big[0]} is {sizes[too_big[0]] / 1e9:.1f} GB; the hub takes files up to "
                              f"{HUB_FILE_LIMIT / 1e9:.0f} GB (save the model in shards)")
        total = sum(sizes.values())
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)  # from main's head when new
        on_phase("Hashing the files")
        hashing = {name: _Reader(source, lambda position: None, cancelled) for name, source in files.items()}
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=reader)
                      for name, reader in hashing.items()]
        _fetch_upload_modes(additions=operations, repo_type="model", repo_id=repo_id,
                            headers=api._build_hf_headers(token=token), revision=branch, endpoint=api.endpoint)
        if too_big := [op.path_in_repo for op in operations
                       if op._upload_mode == "regular" and op.upload_info.size > REGULAR_FILE_LIMIT]:
            raise TuningError(f"{too_big[0]} is {sizes[too_big[0]] / 1e6:.0f} MB and this hub would store it "
                              f"without large-file (LFS) support, which it refuses over "
                              f"{REGULAR_FILE_LIMIT / 1e6:.0f} MB; enable LFS for this repo's files on the hub")
        unchanged = [op.path_in_repo for op in operations if op._remote_oid and op._remote_oid == op._local_oid]
        for op in operations:
            op._is_uploaded = op.path_in_repo in unchanged  # the hub has these bytes: the commit leaves them out
        for op in operations:  # from here on, what is read is what the upload sends
            op.path_or_fileobj._on_read = read_to(op.path_in_repo)
            op.path_or_fileobj.seek(0)
        on_phase("Uploading")
        for op in sorted(operations, key=lambda op: op.upload_info.size):
            if op._upload_mode == "lfs" and op.path_in_repo not in unchanged:
                api.preupload_lfs_files(repo_id, additions=[op], revision=branch, free_memory=False)
        on_phase("Committing")
        info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=branch)
    except TuningError:
        raise
    except (HfHubHTTPError, OSError, RuntimeError, ValueError) as exc:
        if _cancelled_in(exc) or cancelled():
            raise PublishCancelled() from None
        raise _hub_error(exc, repo_id) from None
    except PublishCancelled:
        raise
    finally:
        for reader in locals().get("hashing", {}).values():
            reader.close()
    on_bytes(total, total)
    return PublishResult(repo_id=repo_id, branch=branch, commit_sha=info.oid, commit_url=info.commit_url,
                         repo_url=f"{api.endpoint}/{repo_id}" + (f"/tree/{branch}" if branch != "main" else ""),
                         uploaded=[name for name in files if name not in unchanged], unchanged=unchanged)
