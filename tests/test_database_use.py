"""The Postgres pass runs exactly the tests that use a database (tests/database_use.py), and a test counted as
database-free that opens one anyway fails in the SQLite pass instead of silently skipping Postgres. Each case runs
pytest in a subprocess on a small sample suite that loads the same plugin."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

INI = """[pytest]
DJANGO_SETTINGS_MODULE = studio.test_settings
markers =
    integration: starts a studio
    e2e: drives a browser
"""
CONFTEST = """
import pytest

pytest_plugins = ("tests.database_use",)


@pytest.fixture
def stack():  # stands in for tests/conftest.py's running studio
    return "a studio"


@pytest.fixture
def rows_by_hand(django_db_blocker):
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def member(admin_user):  # reaches the database through pytest-django's admin_user, two fixtures down
    return admin_user
"""
RULE_SAMPLE = """
import pytest
from django.test import SimpleTestCase, TestCase


def test_pure(tmp_path): pass
def test_django_helpers_without_a_database(settings, client, rf): pass
def test_db(db): pass
def test_transactional(transactional_db): pass
def test_through_a_fixture(member): pass
def test_live(live_server): pass
def test_stack(stack): pass
def test_unblocks_by_hand(rows_by_hand): pass
@pytest.mark.django_db
def test_marked(): pass
@pytest.mark.integration
def test_integration(): pass
@pytest.mark.e2e
def test_browser(): pass
class TestModels(TestCase):
    def test_case(self): pass
class TestNoDatabase(SimpleTestCase):
    def test_simple(self): pass
"""
USING_A_DATABASE = {"test_db", "test_transactional", "test_through_a_fixture", "test_live", "test_stack",
                    "test_unblocks_by_hand", "test_marked", "test_integration", "test_browser", "test_case"}
DATABASE_FREE = {"test_pure", "test_django_helpers_without_a_database", "test_simple"}

# What a subprocess of a test does when it opens the DATABASE_URL it inherits (without one, SQLite in its data
# folder), as the studio's settings do; only Django's database layer is configured, so that it starts quickly.
OPENER = """
import os, dj_database_url, django
from django.conf import settings
settings.configure(DATABASES={"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or "sqlite:///own.db")})
django.setup()
from django.db import connection
connection.ensure_connection()
"""
GUARD_SAMPLE = """
import subprocess, sys
from pathlib import Path

import pytest

from tests.stack import start_stack


def _query():
    subprocess.run([sys.executable, "opener.py"], check=True, timeout=120)


def test_opens_in_a_subprocess_unmarked():
    _query()


@pytest.mark.integration
def test_opens_in_a_subprocess_marked():
    _query()


def test_starts_a_studio_unmarked(tmp_path):
    start_stack(tmp_path, Path("no-model"))


def test_pure():
    assert 1 + 1 == 2
"""


# Plugins the samples do not need (hypothesis alone takes seconds to import): each sample starts in seconds.
UNUSED_PLUGINS = [arg for name in ("cacheprovider", "hypothesispytest", "xdist", "xdist.looponfail", "anyio", "valkey",
                                   "platformdirs", "timeout") for arg in ("-p", f"no:{name}")]
POSTGRES = "postgres://nobody@127.0.0.1:9/none"  # never connected to: the samples run no database test on it


def run_sample(tmp_path: Path, sample: str, *args: str, database_url: str | None) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(sample)
    (tmp_path / "opener.py").write_text(OPENER)
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=str(REPO), DATA_DIR=str(tmp_path / "data"))
    if database_url:
        env["DATABASE_URL"] = database_url
    done = subprocess.run([sys.executable, "-m", "pytest", *UNUSED_PLUGINS, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_the_postgres_pass_collects_the_database_tests_and_says_how_many_it_left(tmp_path):
    code, out = run_sample(tmp_path, RULE_SAMPLE, "--collect-only", "-q", database_url=POSTGRES)
    collected = {line.rsplit("::", 1)[1] for line in out.splitlines() if line.startswith("test_sample.py::")}
    assert code == 0 and collected == USING_A_DATABASE, out
    assert f"{len(USING_A_DATABASE)}/{len(USING_A_DATABASE | DATABASE_FREE)} tests collected" in out, out
    assert (f"Postgres pass: {len(DATABASE_FREE)} of {len(USING_A_DATABASE | DATABASE_FREE)} tests left to the "
            "SQLite pass") in out, out


def test_a_postgres_pass_left_nothing_to_run_succeeds(tmp_path):
    """``run.py test tests/core/...``: the SQLite pass ran them; the Postgres pass has nothing to add, which is no
    failure (pytest's own exit code for it is 5)."""
    code, out = run_sample(tmp_path, "def test_pure(): pass\n", database_url=POSTGRES)
    assert code == 0 and "Postgres pass: 1 of 1 tests left to the SQLite pass" in out, out


def test_the_sqlite_pass_fails_a_database_free_test_that_opens_a_database(tmp_path):
    code, out = run_sample(tmp_path, GUARD_SAMPLE, "-rA", database_url=None)
    assert code == 1, out
    assert "PASSED test_sample.py::test_pure" in out, out
    assert "PASSED test_sample.py::test_opens_in_a_subprocess_marked" in out, out
    assert "ERROR test_sample.py::test_opens_in_a_subprocess_unmarked" in out, out  # at its teardown
    assert "test_opens_in_a_subprocess_unmarked opened a database in a subprocess" in out, out
    assert "test_starts_a_studio_unmarked starts a studio (which has a database), but the suite counts it as " \
           "database-free" in out, out
    assert "1 failed, 3 passed, 1 error" in out, out  # the unmarked one passes, then errs at teardown
