"""Models from a Hugging Face hub (huggingface.co, a mirror, or a self-hosted
hub behind ``HF_ENDPOINT``), through ``huggingface_hub`` itself: what a repo
holds is checked before any weight is fetched (``hub_plan``), then the files
are downloaded one by one into a directory (``hub_download``), each resumable:
an interrupted file continues where it stopped, in this run (the library
retries a dropped connection with a Range request) or the next.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuning.errors import TuningError
from tuning.model_info import check_architecture

# What a model directory needs to train, generate and export: config, weights,
# tokenizer, generation defaults and the card. Other files (ONNX, GGUF copies,
# original checkpoints) are left on the hub.
WANTED = ("*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "README.md",
          "LICENSE*", "*.jinja")
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
FREE_SPACE_MARGIN = 1.05  # room for the download plus 5 %


class DownloadCancelled(Exception):
    """The user cancelled: the files downloaded so far stay for a later try."""


@dataclass
class HubPlan:
    repo_id: str
    revision: str  # as asked (branch, tag or sha)
    sha: str  # the commit it resolved to: what is downloaded and recorded
    files: dict[str, int]  # path in the repo → size in bytes
    gated: bool = False
    license: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _hub_error(exc: Exception, repo_id: str, revision: str, has_token: bool) -> TuningError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return TuningError(
            f"{repo_id} is gated: accept its conditions on the hub, then add an access token of that account"
            if not has_token else f"{repo_id} is gated and this token has no access; accept its conditions on the "
                                  f"hub with the token's account")
    if isinstance(exc, RevisionNotFoundError):
        return TuningError(f"{repo_id} has no revision '{revision}'; give a branch, tag or commit that exists")
    if isinstance(exc, RepositoryNotFoundError):
        return TuningError(f"no model '{repo_id}' on the hub (or it is private: add an access token that can read it)")
    return TuningError(f"the hub could not be reached for {repo_id}: {exc}")


def hub_plan(repo_id: str, *, revision: str = "main", token: str | None = None, endpoint: str | None = None,
             target_dir: Path, allow_pickle: bool = False, trust_remote_code: bool = False) -> HubPlan:
    """Everything checked before the weights are fetched: the repo and the
    revision exist and are readable, the architecture is one the studio can
    train (its config.json is fetched first, into ``target_dir``), the
    weights are safetensors (or pickles allowed), and the disk has room.
    Raises TuningError saying what is wrong and what to do."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        config_path = hf_hub_download(repo_id, "config.json", revision=info.sha, local_dir=target_dir,
                                      endpoint=endpoint, token=token or False)
    except (HfHubHTTPError, OSError) as exc:
        raise _hub_error(exc, repo_id, revision, bool(token)) from None
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    config = json.loads(Path(config_path).read_text())
    check_architecture(config, trust_remote_code=trust_remote_code)
    wanted = [name for name in sizes if any(fnmatch.fnmatch(Path(name).name, p) for p in WANTED)]
    if not any(name.endswith(".safetensors") for name in wanted):
        pickled = [name for name in sizes if any(fnmatch.fnmatch(Path(name).name, p) for p in PICKLED)]
        if not pickled:
            raise TuningError(f"{repo_id}@{info.sha[:12]} has no weights (no .safetensors file)")
        if not allow_pickle:
            raise TuningError(f"{repo_id} has only pickled weights ({', '.join(sorted(pickled)[:3])}), which can run "
                              f"code when loaded; the studio loads safetensors only. Pick a repo with safetensors "
                              f"weights, or ask an admin to allow pickled weights for this model")
        wanted += pickled
    plan = HubPlan(repo_id=repo_id, revision=revision, sha=info.sha, files={name: sizes[name] for name in wanted},
                   gated=bool(getattr(info, "gated", False)),
                   license=str((getattr(info, "card_data", None) or {}).get("license", "") or ""))
    free = shutil.disk_usage(_existing_parent(target_dir)).free
    if plan.total_bytes * FREE_SPACE_MARGIN > free:
        raise TuningError(f"{repo_id} needs {plan.total_bytes / 2**30:.1f} GiB and the model storage has "
                          f"{free / 2**30:.1f} GiB free; free some space (the Storage page) or ask an admin")
    return plan


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return path


def hub_download(plan: HubPlan, *, target_dir: Path, token: str | None = None, endpoint: str | None = None,
                 on_bytes: Callable[[int], None] = lambda n: None, on_file: Callable[[str], None] = lambda name: None,
                 cancelled: Callable[[], bool] = lambda: False) -> Path:
    """Download the plan's files into ``target_dir`` (the hub's own layout
    under it), largest last so the small files are there first. ``on_bytes``
    hears every chunk, ``on_file`` every finished file; ``cancelled`` is asked
    with each chunk and stops the download (DownloadCancelled) within one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from tqdm.auto import tqdm

    class Progress(tqdm):
        """huggingface_hub draws its byte counts through this class: report them, and stop when cancelled."""

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if cancelled():
                raise DownloadCancelled()
            if n:
                on_bytes(int(n))
            return super().update(n)

    for name in sorted(plan.files, key=lambda n: (plan.files[n], n)):
        if cancelled():
            raise DownloadCancelled()
        try:
            hf_hub_download(plan.repo_id, name, revision=plan.sha, local_dir=target_dir, endpoint=endpoint,
                            token=token or False, tqdm_class=Progress)
        except (HfHubHTTPError, OSError) as exc:
            raise _hub_error(exc, plan.repo_id, plan.revision, bool(token)) from None
        on_file(name)
    return Path(target_dir)
