"""The API docs page's Python examples, run as a reader would run them
(copied from the page, a token in STUDIO_TOKEN) against the real stack:
upload, create a job, follow its events, download, then chat with the
adapter through /v1 with the openai client."""

import html
import json
import re
import subprocess
import sys
import zipfile

import pytest

from tests.integration.test_openai_serving import TOKEN

pytestmark = pytest.mark.integration
ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green"])


def _example(page: str, name: str) -> str:
    return html.unescape(re.search(rf'<pre id="example-{name}"><code>(.*?)</code></pre>', page, re.S).group(1))


def test_the_python_examples_run_as_written(stack, tmp_path):
    page = stack.login().get(f"{stack.base_url}/api/docs/").text
    script = _example(page, "python") + "\n" + _example(page, "openai")
    (tmp_path / "train.jsonl").write_text(ROWS)
    token = stack.manage("shell", "-c", TOKEN.format(username="admin")).strip().splitlines()[-1]
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"STUDIO": stack.base_url, "STUDIO_TOKEN": token, "STUDIO_MODEL": "Tiny Llama",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^dataset \d+ alpaca 4 rows$", out, re.M)
    assert re.search(r"^step 20 loss \d", out, re.M) and "status succeeded" in out
    with zipfile.ZipFile(tmp_path / "adapter.zip") as archive:
        assert "adapter_config.json" in [name.rsplit("/", 1)[-1] for name in archive.namelist()]
    assert "downloaded artifact" in out
