"""The launcher's output is the studio's own lines: what libraries print at import (torchao's GPU kernels,
Triton, torch's pytree notice) is filtered by logger and message in settings.LOGGING, and the warnings
addressed to library callers by the launcher's warnings filter; anything else those libraries say still
shows. Real subprocesses with the studio's settings and the real libraries."""

import os
import subprocess
import sys
from pathlib import Path

from studio import launcher

REPO = Path(__file__).resolve().parent.parent
NOISE = ("Failed to load", "Detected no triton", "is an Enum subclass")


def _stderr(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_library_import_noise_is_filtered_but_their_other_lines_are_not(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.settings", "DATA_DIR": str(tmp_path)}
    code = ("import django, logging; django.setup(); import torchao, torchao.kernel.intmm; "
            "logging.getLogger('torchao').warning('a real torchao problem'); "
            "logging.getLogger('torch.utils._pytree').warning('another pytree notice')")
    err = _stderr(code, env)
    assert not [line for line in err.splitlines() if any(noise in line for noise in NOISE)], err
    assert "a real torchao problem" in err and "another pytree notice" in err
    # Without the studio's logging settings the same import prints them: the filter is what removes them.
    bare = _stderr("import torchao, torchao.kernel.intmm", {**os.environ, "DATA_DIR": str(tmp_path)})
    assert any(noise in bare for noise in NOISE), bare


def test_the_launchers_children_drop_celerys_root_warning_and_keep_other_warnings():
    code = ("import warnings; from celery.exceptions import SecurityWarning; "
            "from celery.platforms import ROOT_DISCOURAGED; "
            "warnings.warn(SecurityWarning(ROOT_DISCOURAGED.format(uid=0, euid=0, gid=0, egid=0))); "
            "warnings.warn(SecurityWarning('something else about security'))")
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    quiet = _stderr(code, launcher.quiet_env(plain))
    assert "superuser privileges" not in quiet and "something else about security" in quiet
    assert "superuser privileges" in _stderr(code, plain)
    assert launcher.quiet_env({**plain, "CELERY_LOG_LEVEL": "DEBUG"})["CELERY_LOG_LEVEL"] == "DEBUG"  # theirs wins
