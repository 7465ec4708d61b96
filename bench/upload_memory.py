"""Peak memory of the web process while it receives and checks a ~1 GB upload.

    .venv/bin/python bench/upload_memory.py [--gigabytes 1.0]

Starts the real web server (uvicorn on 127.0.0.1, as the launcher does) on a
fresh DATA_DIR under /tmp, logs in, and uploads a generated JSONL file of
instruction/output rows (written to /tmp first, then streamed from a
generator by requests with a Content-Length, never held in memory). The web
process streams the body to a temporary file, checks every row and stores
the dataset. The figure is the web process's peak resident memory
(VmHWM from /proc, which covers its start-up too) in MB, and its ratio to
the 300 MB target (at most 1.0 passes). The generated file, the server's
DATA_DIR and its temporary upload are deleted afterwards.

Prints one JSON line: {"figure": "upload_peak_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio import launcher  # noqa: E402  (light: imports neither Django settings nor torch)

TARGET_MB = 300
USER, PASSWORD = "bench", "bench-pass-123"
CHUNK = 1 << 20  # bytes sent per write


def write_rows(path: Path, size_bytes: int) -> int:
    """Instruction/output rows of about 1 KB each until the file reaches ``size_bytes``; returns the rows."""
    rows, written = 0, 0
    filler = "lorem ipsum dolor sit amet " * 30
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            line = json.dumps({"instruction": f"Row {rows}: summarise this. {filler}",
                               "output": f"Summary {rows}: {filler[:200]}"}) + "\n"
            handle.write(line)
            written += len(line)
            rows += 1
    return rows


class MultipartStream:
    """A multipart/form-data body read from disk chunk by chunk. ``__len__`` lets requests send a
    Content-Length instead of chunked encoding (Django's upload limit reads the length up front)."""

    def __init__(self, path: Path, fields: dict):
        self.boundary = uuid.uuid4().hex
        self.path = path
        head = b"".join(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
                        .encode() for key, value in fields.items())
        self.head = head + (f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
                            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.path.stat().st_size + len(self.tail)

    def __iter__(self):
        yield self.head
        with open(self.path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        yield self.tail


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the generated upload (1e9 bytes)")
    args = parser.parse_args()
    import requests

    work = Path(tempfile.mkdtemp(prefix="upload-bench-", dir="/tmp"))
    upload_tmp = work / "upload-tmp"
    upload_tmp.mkdir()
    data_file = work / "big.jsonl"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.settings", "DATA_DIR": str(work / "data"),
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "STUDIO_ADMIN_USERNAME": USER, "STUDIO_ADMIN_PASSWORD": PASSWORD,
           # The temporary upload goes here too, so everything is deleted with the work directory.
           "TMPDIR": str(upload_tmp)}
    for variable in ("DATABASE_URL", "MEDIA_ROOT", "REDIS_URL", "SECRET_KEY"):
        env.pop(variable, None)
    web = None
    try:
        rows = write_rows(data_file, int(args.gigabytes * 1e9))
        for command in (["migrate", "--noinput"], ["studio_setup", "--skip-bundled-model"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        port = launcher.free_port()
        log = open(work / "web.log", "wb")
        web = launcher.start_web(env, "127.0.0.1", port, stdout=log, stderr=subprocess.STDOUT)
        launcher.wait_for_port("127.0.0.1", port, launcher.WEB_START_TIMEOUT_S)
        base = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.get(f"{base}/accounts/login/")
        session.post(f"{base}/accounts/login/", data={"username": USER, "password": PASSWORD,
                                                      "csrfmiddlewaretoken": session.cookies["csrftoken"]})
        idle_mb = peak_rss_mb(web.pid)
        body = MultipartStream(data_file, {"csrfmiddlewaretoken": session.cookies["csrftoken"], "name": "big"})
        started = time.monotonic()
        response = session.post(f"{base}/datasets/", data=body, allow_redirects=False, timeout=3600,
                                headers={"Content-Type": body.content_type, "Referer": f"{base}/datasets/"})
        seconds = time.monotonic() - started
        if response.status_code != 302:
            tail = (work / "web.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"upload failed with HTTP {response.status_code}: {response.text[:2000]}\n{tail}")
        peak = peak_rss_mb(web.pid)
        print(json.dumps({"figure": "upload_peak_rss_mb", "value": round(peak, 1),
                          "ratio_to_target": round(peak / TARGET_MB, 3), "target_mb": TARGET_MB,
                          "idle_rss_mb": round(idle_mb, 1), "upload_bytes": data_file.stat().st_size,
                          "rows": rows, "seconds": round(seconds, 1), "server": "uvicorn"}))
    finally:
        if web is not None:
            launcher.stop_all([web])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
