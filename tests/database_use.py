"""Which tests touch a database, so that the suite's Postgres pass runs only those (a pytest plugin that
tests/conftest.py loads).

``run.py test`` runs the suite twice: on SQLite, then with ``DATABASE_URL`` naming a real Postgres server
(tests/postgres.py). A test that never opens a database (the core library's, the benchmarks' quick runs, the docs
and architecture checks) runs the same on both, so the Postgres pass deselects it and says how many it left to the
SQLite pass. It is decided at collection from what each test asks for, not from a list of folders. A test uses a
database when

- it carries ``django_db``, or ``integration`` / ``e2e`` (they start a studio, which has a database of its own);
- its fixture closure holds ``django_db_setup`` (which ``db``, ``transactional_db``, ``admin_user`` and the other
  pytest-django database fixtures all reach), ``live_server``, or ``stack`` (a running studio);
- a fixture in its closure asks for ``django_db_blocker`` (to unblock the database by hand); or
- it is a Django TestCase with ``databases``.

What keeps the rule honest, in the SQLite pass, where every test runs:

- in this process, pytest-django refuses a database query from a test without the above;
- a subprocess of a database-free test inherits a ``DATABASE_URL`` naming a sentinel SQLite file; a test after
  which that file exists fails, saying which marker to add (its subprocess opened a database, and the Postgres
  pass would have dropped it);
- ``tests.stack.start_stack`` refuses to start a studio inside a database-free test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.postgres import is_postgres

DATABASE_MARKERS = ("django_db", "integration", "e2e")
DATABASE_FIXTURES = frozenset({"django_db_setup", "live_server", "stack"})
HOW_TO_MARK = ("give it a database fixture (db, transactional_db, stack) or the django_db marker "
               "(integration or e2e where it starts a studio)")

USES_DATABASE = pytest.StashKey[bool]()
LEFT_TO_SQLITE = pytest.StashKey[tuple[int, int]]()  # (deselected, collected) in the Postgres pass
SENTINEL = pytest.StashKey[Path]()
SAVED_URL = pytest.StashKey["str | None"]()

_database_free_test: str | None = None  # the node id of the database-free test running in this process


def postgres_pass() -> bool:
    return is_postgres(os.environ.get("DATABASE_URL"))


def uses_database(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(name) for name in DATABASE_MARKERS):
        return True
    cls = getattr(item, "cls", None)
    if cls is not None and getattr(cls, "databases", None):
        from django.test import SimpleTestCase

        if issubclass(cls, SimpleTestCase):
            return True
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # not a test function (a doctest): no fixtures
        return False
    if DATABASE_FIXTURES.intersection(info.names_closure):
        return True
    # pytest-django's own autouse fixture asks for the blocker in every test; a fixture of ours asks to unblock
    return any("django_db_blocker" in fixturedef.argnames and not fixturedef.func.__module__.startswith("pytest_django")
               for name in info.names_closure for fixturedef in info.name2fixturedefs.get(name, ()))


def refuse_in_database_free_test(what: str) -> None:
    """Called by what opens a database out of process (a studio's start): fail loudly in a test that the
    Postgres pass would leave out."""
    if _database_free_test is not None:
        raise RuntimeError(f"{_database_free_test} {what}, but the suite counts it as database-free, so the "
                           f"Postgres pass would leave it out: {HOW_TO_MARK}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.stash[USES_DATABASE] = uses_database(item)
    if not postgres_pass():
        return
    left = [item for item in items if not item.stash[USES_DATABASE]]
    config.stash[LEFT_TO_SQLITE] = (len(left), len(items))
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item.stash[USES_DATABASE]]


def pytest_configure(config):
    if not postgres_pass():
        config.stash[SENTINEL] = Path(tempfile.mkdtemp(prefix="studio-database-free-")) / "never-opened.sqlite3"


def pytest_unconfigure(config):
    if SENTINEL in config.stash:
        shutil.rmtree(config.stash[SENTINEL].parent, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: before any fixture of the test is set up
def pytest_runtest_setup(item):
    global _database_free_test
    if not item.stash.get(USES_DATABASE, True):
        _database_free_test = item.nodeid
        if SENTINEL in item.config.stash:
            item.stash[SAVED_URL] = os.environ.get("DATABASE_URL")
            os.environ["DATABASE_URL"] = f"sqlite:///{item.config.stash[SENTINEL]}"
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after every fixture of the test is torn down
def pytest_runtest_teardown(item, nextitem):
    global _database_free_test
    try:
        result = yield
    finally:
        _database_free_test = None
        opened = _restore_url(item)
    if opened:
        raise RuntimeError(f"{item.nodeid} opened a database in a subprocess (DATABASE_URL, set to a sentinel "
                           f"SQLite file for database-free tests, was used), but the suite counts it as "
                           f"database-free, so the Postgres pass would leave it out: {HOW_TO_MARK}")
    return result


def _restore_url(item) -> bool:
    """Give DATABASE_URL back; True when the sentinel file was opened meanwhile (and remove it)."""
    if SAVED_URL not in item.stash:
        return False
    saved = item.stash[SAVED_URL]
    del item.stash[SAVED_URL]
    if saved is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = saved
    sentinel = item.config.stash[SENTINEL]
    opened = [path for path in sentinel.parent.iterdir() if path.name.startswith(sentinel.name)]  # -wal, -shm too
    for path in opened:
        path.unlink()
    return bool(opened)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workeroutput") and LEFT_TO_SQLITE in session.config.stash:
        session.config.workeroutput["left_to_sqlite"] = session.config.stash[LEFT_TO_SQLITE]
    left, collected = session.config.stash.get(LEFT_TO_SQLITE, (0, 0))
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and left and left == collected:
        # `run.py test tests/core/...`: the SQLite pass ran them all, and there is nothing for Postgres to add
        session.exitstatus = pytest.ExitCode.OK


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's: a worker's collection is reported back here
def pytest_testnodedown(node, error):
    left = getattr(node, "workeroutput", {}).get("left_to_sqlite")
    if left is not None:
        node.config.stash[LEFT_TO_SQLITE] = tuple(left)


def pytest_terminal_summary(terminalreporter, config):
    if LEFT_TO_SQLITE in config.stash:
        left, collected = config.stash[LEFT_TO_SQLITE]
        terminalreporter.write_line(
            f"Postgres pass: {left} of {collected} tests left to the SQLite pass: they open no database (no "
            f"database fixture, no django_db/integration/e2e marker; tests/database_use.py)")
