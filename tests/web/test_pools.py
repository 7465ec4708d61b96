"""Pools declare their machines and devices: each worker reports how many
devices it has (worker/devices.py, WORKER_DEVICES overriding torch), a
pool's capacity is the sum over its alive workers, a training job asks for
1 … that many (the form and the API refuse more, naming the field and the
capacity), a worker alone claims only jobs its devices hold, and the queue page,
the job page and the API show which worker's devices a running job holds."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from studio.accounts.services import api_token_create
from studio.jobs.models import Job, JobHold
from studio.jobs.services import job_create_train
from studio.jobs.services_queue import job_claim_next
from studio.workers.models import WorkerNode
from studio.workers.selectors import pool_capacity
from studio.workers.services import worker_register
from tuning.errors import ConfigError


@pytest.fixture
def dataset(pairs_dataset):
    return pairs_dataset


def register(name: str, devices: int, pool: str = "default") -> WorkerNode:
    return worker_register(name=name, pool=pool, hostname="box", pid=1, device="CPU: test", device_memory_mib=4096,
                           device_count=devices, address="10.0.0.7")


def submit(member, team, dataset, base_model, devices: int = 1, name: str = "") -> Job:
    return job_create_train(user=member, team=team, dataset=dataset, base_model=base_model,
                            settings_values={"max_steps": 3, "devices": devices}, method_params={}, name=name)


def test_a_worker_reports_its_devices_and_the_settings_override_them(settings):
    from worker.devices import worker_devices

    worker_devices.cache_clear()
    try:
        found = worker_devices()
        assert found.count >= 1 and found.kind in ("cpu", "cuda") and found.memory_mib > 0
        settings.WORKER_DEVICES, settings.WORKER_DEVICE_MEMORY_MIB = 3, 1000
        worker_devices.cache_clear()
        assert (worker_devices().count, worker_devices().memory_mib, worker_devices().kind) == (3, 1000, found.kind)
    finally:
        worker_devices.cache_clear()


def test_a_pools_capacity_is_the_sum_over_its_alive_workers(db, settings):
    settings.JOB_LOST_AFTER_S = 60
    assert pool_capacity("default") is None  # nobody alive: unknown, not zero
    register("a@box", 2)
    register("b@box", 1, pool="default,dataset")  # a worker consuming two queues counts in both
    register("lost@box", 8)
    WorkerNode.objects.filter(name="lost@box").update(last_heartbeat_at=timezone.now() - timezone.timedelta(seconds=61))
    register("other@box", 4, pool="gpu")
    capacity = pool_capacity("default")
    assert (capacity.devices, capacity.largest, capacity.workers) == (3, 2, 2)
    assert pool_capacity("dataset").devices == 1 and pool_capacity("gpu").devices == 4
    node = WorkerNode.objects.get(name="a@box")
    assert (node.device_count, node.device_kind, node.address) == (2, "cpu", "10.0.0.7")


def test_a_job_asks_for_at_most_what_the_pool_has(member, team, dataset, tiny_base_model):
    assert submit(member, team, dataset, tiny_base_model, devices=4).devices == 4  # no worker alive: it may wait
    register("a@box", 2)
    register("b@box", 1)
    assert submit(member, team, dataset, tiny_base_model, devices=3).devices == 3
    with pytest.raises(ConfigError) as refused:
        submit(member, team, dataset, tiny_base_model, devices=4)
    assert refused.value.errors == {"devices": "pool default has 3 device(s) on its 2 alive worker(s) (at most 2 "
                                               "on one); ask for 1 … 3"}


def test_the_form_and_the_api_refuse_more_devices_than_the_pool_has(client, member, member_client, dataset,
                                                                    tiny_base_model):
    register("a@box", 2)
    form = {"dataset": dataset.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "sft",
            "fields_for": "lora", "max_steps": 1, "devices": 5}
    refused = member_client.post("/jobs/new/", form)
    assert refused.status_code == 400 and not Job.objects.exists()
    assert "pool default has 2 device(s) on its 1 alive worker(s)" in refused.content.decode()
    assert member_client.post("/jobs/new/", {**form, "devices": 2}).status_code == 302

    raw = api_token_create(user=member, name="script")[1]
    body = {"model": tiny_base_model.pk, "training_file": dataset.pk, "hyperparameters": {"max_steps": 1,
                                                                                         "devices": 3}}
    response = client.post("/api/v1/fine_tuning/jobs", json.dumps(body), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "hyperparameters.devices" and "ask for 1 … 2" in error["message"]


def test_a_worker_claims_only_jobs_its_devices_hold_and_the_pages_show_the_hold(member, member_client, team,
                                                                                dataset, tiny_base_model, client):
    narrow = submit(member, team, dataset, tiny_base_model, devices=1, name="narrow")
    wide = submit(member, team, dataset, tiny_base_model, devices=2, name="wide")
    assert job_claim_next(pool="default", worker_name="one@box", devices=1).pk == narrow.pk
    # No idle worker to join it: a worker of one device cannot start the 2-device job (test_backfill.py: when
    # several can).
    assert job_claim_next(pool="default", worker_name="one-more@box", devices=1) is None
    assert job_claim_next(pool="default", worker_name="two@box", devices=2).pk == wide.pk
    wide.refresh_from_db()
    hold, = wide.current_holds()
    assert (hold.worker_name, hold.devices, hold.role, hold.attempt) == ("two@box", 2, "head", 1)
    assert JobHold.objects.filter(job=narrow, worker_name="one@box", devices=1).exists()

    page = member_client.get(f"/jobs/{wide.pk}/").content.decode()
    assert '<span data-hold="two@box">two@box (2 devices)</span>' in page
    queue = member_client.get("/jobs/queue/").content.decode()
    assert 'data-hold="two@box">on two@box: 2 devices</div>' in queue
    assert 'data-hold="one@box">on one@box: 1 device</div>' in queue

    raw = api_token_create(user=member, name="script")[1]
    answer = client.get(f"/api/v1/fine_tuning/jobs/{wide.pk}", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert answer["devices"] == 2 and answer["holds"] == [{"worker": "two@box", "devices": 2, "role": "head"}]
