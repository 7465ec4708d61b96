"""The README says what the code does: the web server its run command
description names is the one the launcher starts, and every module path
the architecture doc names exists."""

import re
from pathlib import Path

from studio import launcher

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn", "daphne", "hypercorn", "gunicorn", "granian")


def test_the_readme_names_the_web_server_the_launcher_starts():
    command = launcher.start_web.__code__.co_consts  # the literal arguments of the command it runs
    started = [server for server in SERVERS if server in command]
    assert len(started) == 1, f"the launcher starts {started}"
    readme = (REPO / "README.md").read_text()
    section = readme.split("## What the run command does", 1)[1].split("\n## ", 1)[0]
    named = [server for server in SERVERS if server in section]
    assert named == started, f"the README's run-command section names {named}; the launcher starts {started}"


def test_every_path_the_architecture_doc_names_exists():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"`((?:studio|tuning|worker|tests|static|templates)/[\w/.]+)`", doc))
    assert len(paths) > 15
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"
