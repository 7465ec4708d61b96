"""Shared fixtures, and how the suite runs in parallel.

pytest.ini runs the suite on pytest-xdist workers (``-n auto --dist
loadscope``). Each worker is its own process with its own temporary
directories (``tmp_path_factory`` is per worker), its own test database
(pytest-django names it after the worker) and, where it starts one, its
own studio stack on free ports. The scheduler below keeps that cheap:

- the tests under tests/integration and tests/e2e, which use the ``stack``
  fixture, are one unit of work, handed out first (it is the longest) and
  run on one worker in the order collected, so one Redis server, web
  server and pair of Celery workers serves them all;
- every other module is a unit of work, so its module-scoped fixtures (a
  trained adapter, exported GGUF files) are built once, on one worker.

``-n 0`` (or ``-p no:xdist``) runs everything in this one process.
"""

import json
import os
from pathlib import Path

import pytest

from tests.tiny_model import tiny_model_dir

REPO = Path(__file__).resolve().parent.parent
STACK_DIRS = ("tests/integration/", "tests/e2e/")  # the tests that share the one stack
# Which tests use a database: the Postgres pass runs only those (tests/database_use.py says how it decides).
pytest_plugins = ("tests.database_use",)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _xdist_workers() -> int:
    """How many xdist workers run this suite (0 outside xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))


def threads_per_process() -> int:
    """Torch threads for each test process, and for the stack's Celery
    workers: the cores shared out among the xdist workers, so that they do
    not oversubscribe the machine."""
    return max(1, _usable_cpus() // max(1, _xdist_workers()))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each worker imports
    torch and its own copy of the test fixtures; the stack's unit of work
    bounds the run's length beyond that). PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return max(1, min(4, _usable_cpus()))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope``, with the stack's tests as one scope, sent first."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class StackFirstScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "stack" if module.startswith(STACK_DIRS) else module

    config.option.loadscopereorder = False  # keep the collection order: the stack's scope first
    return StackFirstScheduling(config, log)


@pytest.hookimpl(wrapper=True)  # after every other plugin's hook (pytest-django sorts by database use)
def pytest_collection_modifyitems(config, items):
    result = yield
    if _xdist_workers():
        misplaced = [item.nodeid for item in items
                     if "stack" in item.fixturenames and not item.nodeid.startswith(STACK_DIRS)]
        if misplaced:
            raise pytest.UsageError(f"tests using the stack fixture belong under {' or '.join(STACK_DIRS)} "
                                    f"(they share one stack on one xdist worker): {misplaced}")
        items[:] = _same_order_in_every_worker(items)
        ours = [item for item in items if item.nodeid.startswith(STACK_DIRS)]
        items[:] = ours + [item for item in items if not item.nodeid.startswith(STACK_DIRS)]
    return result


def _same_order_in_every_worker(items):
    """Each test function's parametrized cases sorted by id. xdist needs
    every worker to collect the same tests in the same order, and a
    parametrization over a set of classes (hashed by address) comes out in
    another order in each process."""
    ordered, start = [], 0
    while start < len(items):
        function = (items[start].parent.nodeid, getattr(items[start], "originalname", items[start].name))
        end = start + 1
        while end < len(items) and (items[end].parent.nodeid, getattr(items[end], "originalname", items[end].name)) \
                == function:
            end += 1
        ordered += sorted(items[start:end], key=lambda item: item.nodeid)
        start = end
    return ordered


@pytest.hookimpl(tryfirst=True)  # before xdist starts its workers
def pytest_sessionstart(session):
    """On a fresh machine, build the cached tiny model and copy the bundled
    encoder once, here, rather than in every xdist worker at once."""
    if hasattr(session.config, "workerinput") or not session.config.getoption("numprocesses", None):
        return
    from tests.tiny_model import CACHE

    tiny_model_dir()
    if not (CACHE / "all-minilm-l6-v2" / "model.safetensors").exists():
        from tuning.models import prepare_bundled_encoder

        prepare_bundled_encoder(CACHE / "all-minilm-l6-v2")


def pytest_configure(config):
    if _xdist_workers():
        import torch

        torch.set_num_threads(threads_per_process())


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A 2-layer Llama with the bundled model's tokenizer (built once, cached)."""
    return tiny_model_dir()


@pytest.fixture
def memorisable_jsonl(tmp_path) -> Path:
    """Four short pairs a tiny model can learn in a few dozen steps."""
    rows = [
        {"instruction": "Say the colour of the sky.", "output": "Blue."},
        {"instruction": "Say the colour of grass.", "output": "Green."},
        {"instruction": "Count to three.", "output": "One, two, three."},
        {"instruction": "Greet me.", "output": "Hello!"},
    ]
    path = tmp_path / "memorise.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model):
    """A running studio (Redis, uvicorn, Celery worker) shared by the
    integration and browser tests."""
    from tests.stack import start_stack
    from studio.launcher import stop_all

    running = start_stack(tmp_path_factory.mktemp("stack"), tiny_model)
    yield running
    # Every process but Redis (the first) is asked to stop at once, not one
    # after another; stop_all then waits for them and stops Redis last.
    for proc in running.procs[1:]:
        if proc.poll() is None:
            proc.terminate()
    stop_all(running.procs)


@pytest.fixture(autouse=True)
def _whole_stack(request):
    """Before and after each test on the shared stack, start again what a test left dead (Stack.heal): a
    test that fails between killing a process and starting it again must not fail the rest."""
    if "stack" not in request.fixturenames:
        yield
        return
    running = request.getfixturevalue("stack")
    _say_healed(running.heal(), "before")
    yield
    _say_healed(running.heal(), "after")


def _say_healed(started: list[str], when: str) -> None:
    if started:
        print(f"[tests] the shared stack had {', '.join(started)} dead {when} this test: started again")
