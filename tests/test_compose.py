"""docker-compose.yml describes the team deployment the README promises.

No Docker engine is needed: the file is checked as data, and, where the
`docker-compose` binary exists (Debian's package), by `docker-compose config`,
which validates and interpolates it without an engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
STUDIO_ENV = {
    "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MEDIA_ROOT", "ALLOWED_HOSTS", "DEFAULT_DEVICE_POOL",
}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def test_services_are_the_team_deployment(services):
    assert {"postgres", "redis", "web", "worker"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["web"]["build"] and services["worker"]["build"]


@pytest.mark.parametrize("name", ["web", "worker"])
def test_studio_services_get_their_settings(services, name):
    env = services[name]["environment"]
    assert STUDIO_ENV <= set(env)
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?"), "SECRET_KEY must be required, never defaulted"
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["DEFAULT_DEVICE_POOL"] == "gpu"


def test_web_and_worker_share_the_media_volume(services):
    def media_mount(service: dict) -> str:
        return next(v for v in service["volumes"] if v.startswith("media:"))

    web, worker = services["web"], services["worker"]
    assert media_mount(web) == media_mount(worker) == f"media:{web['environment']['MEDIA_ROOT']}"
    assert web["environment"]["MEDIA_ROOT"] == worker["environment"]["MEDIA_ROOT"]
    assert "media" in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]


def test_worker_reserves_one_gpu_and_consumes_the_gpu_queue(services):
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "CUDA_VISIBLE_DEVICES" in worker["environment"]
    command = [str(part) for part in worker["command"]]
    assert command[command.index("-Q") + 1] == "gpu"
    assert command[command.index("--pool") + 1] == "solo"
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("-I") + 1] == "worker.tasks"


def test_an_interactive_worker_answers_the_playground_and_the_form(services):
    # Playground chats and parameter counts go to PLAYGROUND_QUEUE ("interactive"); a team deployment needs a
    # worker on it beside the GPU workers, sharing their settings and media.
    interactive = services["interactive"]
    command = [str(part) for part in interactive["command"]]
    assert command[command.index("-Q") + 1] == "interactive" and "worker.tasks" in command
    assert STUDIO_ENV <= set(interactive["environment"])
    assert any(volume.startswith("media:") for volume in interactive["volumes"])


def test_a_dataset_worker_consumes_the_dataset_pool(services):
    # Analyses and diet steps go to DATASET_POOL ("dataset" unless set), a queue no GPU worker consumes, so
    # they never wait behind training; the deployment needs a worker on it, sharing the settings and media.
    dataset = services["dataset"]
    command = [str(part) for part in dataset["command"]]
    assert command[command.index("-Q") + 1] == dataset["environment"].get("DATASET_POOL", "dataset")
    assert command[command.index("--pool") + 1] == "solo" and "worker.tasks" in command
    assert "deploy" not in dataset  # CPU is enough: no GPU reserved for it
    assert STUDIO_ENV <= set(dataset["environment"])
    assert any(volume.startswith("media:") for volume in dataset["volumes"])
    gpu_queue = services["worker"]["command"][services["worker"]["command"].index("-Q") + 1]
    assert gpu_queue != "dataset"


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is not installed (apt-get install docker-compose)")
    env = {**os.environ, "SECRET_KEY": "test-secret"}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # Without SECRET_KEY the file must refuse to start rather than use a default.
    env.pop("SECRET_KEY")
    refused = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr


def test_postgres_and_redis_are_not_published_and_the_web_waits_for_them(services):
    # docs/DEPLOYMENT.md: users reach the web server only; the database and the broker stay on the
    # deployment's network, and the web server (which migrates) starts once both answer their health checks.
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]
    assert services["web"]["ports"] == ["${STUDIO_PORT:-8000}:8000"]
    assert services["web"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                             "redis": {"condition": "service_healthy"}}
    for worker in ("worker", "dataset", "interactive"):  # workers start on a migrated database
        assert services[worker]["depends_on"] == {"web": {"condition": "service_healthy"}}
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "ping" in services["redis"]["healthcheck"]["test"]
