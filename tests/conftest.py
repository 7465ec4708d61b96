import json
from pathlib import Path

import pytest

from tests.tiny_model import tiny_model_dir

REPO = Path(__file__).resolve().parent.parent


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
    stop_all(running.procs)
