"""Worker registry services and selectors, the registry thread, and the
admin-only /workers/ page."""

import threading

import pytest
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.services import job_create_train
from studio.workers.models import WorkerNode
from studio.workers.selectors import (pool_device_memory_mib, worker_rows, worker_state, workers_alive,
                                      workers_lost)
from studio.workers.services import worker_heartbeat, worker_register, worker_stopped
from studio.workers.templatetags.workers_tags import mib, seconds_ago


def register(name="gpu0@box", pool="gpu", memory=81559, device="CUDA: NVIDIA H100 80GB HBM3"):
    return worker_register(name=name, pool=pool, hostname="box", pid=1234, device=device, device_memory_mib=memory)


def age(name: str, seconds: int) -> None:
    WorkerNode.objects.filter(name=name).update(
        last_heartbeat_at=timezone.now() - timezone.timedelta(seconds=seconds))


@pytest.fixture
def admin(team):
    return user_create(username="ada", password="pw-ada-123", team=team, role=Membership.Role.ADMIN)


@pytest.fixture
def job(member, team, tiny_base_model, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("instruction,output\nq,a\n")
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="d.csv")
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"max_steps": 1}, method_params={}, name="our run")


# --- services and selectors ---

def test_register_heartbeat_stop(db, job):
    register()
    assert worker_heartbeat(name="gpu0@box", current_job_id=job.pk, memory_used_mib=2048)
    node = WorkerNode.objects.get(name="gpu0@box")
    assert (node.current_job_id, node.memory_used_mib, worker_state(node)) == (job.pk, 2048, "alive")
    worker_stopped(name="gpu0@box")
    node.refresh_from_db()
    assert worker_state(node) == "stopped" and node.current_job is None
    # A late beat after the goodbye does not revive it; registering does.
    assert not worker_heartbeat(name="gpu0@box", current_job_id=None, memory_used_mib=1)
    register()
    node.refresh_from_db()
    assert worker_state(node) == "alive" and node.stopped_at is None


def test_heartbeat_of_an_unknown_worker_says_so(db):
    assert worker_heartbeat(name="ghost@nowhere", current_job_id=None, memory_used_mib=1) is False


def test_heartbeat_with_a_deleted_job_drops_the_link(db, job):
    register()
    job_id = job.pk
    job.delete()
    assert worker_heartbeat(name="gpu0@box", current_job_id=job_id, memory_used_mib=1)
    assert WorkerNode.objects.get(name="gpu0@box").current_job is None


def test_reregistering_takes_over_the_row(db):
    register(memory=100)
    register(memory=200)
    assert WorkerNode.objects.count() == 1 and WorkerNode.objects.get().device_memory_mib == 200


def test_alive_and_lost_follow_job_lost_after(db, settings):
    settings.JOB_LOST_AFTER_S = 60
    register("a@box")
    register("b@box")
    age("b@box", 61)
    register("c@box")
    worker_stopped(name="c@box")
    assert [n.name for n in workers_alive()] == ["a@box"]
    assert [n.name for n in workers_lost()] == ["b@box"]


def test_pool_device_memory_is_the_largest_alive_worker(db, settings):
    settings.JOB_LOST_AFTER_S = 60
    register("small@box", memory=24000)
    register("big@box", memory=81559)
    register("huge-but-lost@box", memory=143000)
    age("huge-but-lost@box", 61)
    register("other-pool@box", pool="cpu", memory=500000)
    assert pool_device_memory_mib("gpu") == 81559
    register("big@box", memory=81559)
    worker_stopped(name="big@box")
    assert pool_device_memory_mib("gpu") == 24000
    assert pool_device_memory_mib("nobody-here") is None


def test_rows_hide_another_teams_job(db, job, team):
    register()
    worker_heartbeat(name="gpu0@box", current_job_id=job.pk, memory_used_mib=1)
    ours, = worker_rows(team_ids={team.pk})
    theirs, = worker_rows(team_ids={team.pk + 1000})
    assert ours["job"] == job and ours["busy"]
    assert theirs["job"] is None and theirs["busy"]


def test_filters():
    assert [seconds_ago(s) for s in (0, 12, 119, 120, 7200, 200000)] == [
        "0 s ago", "12 s ago", "119 s ago", "2 min ago", "2 h ago", "2 d ago"]
    assert (mib(512), mib(81559)) == ("512 MiB", "79.6 GiB")


# --- the registry thread (worker/registry.py), in this process ---

def test_device_and_memory_readings():
    from worker.devices import cpu_description, ram_mib
    from worker.registry import rss_mib

    assert cpu_description().startswith("CPU: ") and " cores" in cpu_description()
    assert ram_mib() > 0
    assert 0 < rss_mib() < ram_mib()


@pytest.mark.django_db(transaction=True)
def test_registry_thread_registers_beats_and_stops(settings, monkeypatch, job):
    from worker import registry, runner
    from worker.devices import Devices

    settings.JOB_HEARTBEAT_S = 0.05
    # No torch import here: the device reading is covered above; this tests the thread.
    monkeypatch.setattr(registry, "worker_devices", lambda: Devices(2, "cpu", "CPU: test", 4096))
    monkeypatch.setattr(runner, "current_job_id", job.pk, raising=False)
    beat = threading.Event()
    real_heartbeat = registry.worker_heartbeat

    def heartbeat(**kwargs):
        done = real_heartbeat(**kwargs)
        beat.set()
        return done

    monkeypatch.setattr(registry, "worker_heartbeat", heartbeat)
    registry.start_registry("thread@box", "default")
    try:
        assert beat.wait(10), "the registry thread never beat"
        node = WorkerNode.objects.get(name="thread@box")
        assert (node.pool, node.device, node.device_memory_mib, node.device_count, node.current_job_id) == (
            "default", "CPU: test", 4096, 2, job.pk)
        assert node.memory_used_mib > 0  # this process's RSS
    finally:
        registry.stop_registry()
    assert worker_state(WorkerNode.objects.get(name="thread@box")) == "stopped"


# --- the page ---

def test_page_needs_login(client):
    response = client.get("/workers/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/workers/", "/workers/table/"])
def test_member_is_refused_with_404(member_client, path):
    register()
    assert member_client.get(path).status_code == 404


def test_admin_sees_workers_live(client, admin, job, settings):
    settings.JOB_LOST_AFTER_S = 60
    register()
    worker_heartbeat(name="gpu0@box", current_job_id=job.pk, memory_used_mib=3072)
    register("old@box", pool="cpu", memory=2048, device="CPU: 2 cores, Intel Xeon")
    age("old@box", 125)
    client.force_login(admin)
    body = client.get("/workers/").content.decode()
    assert 'hx-get="/workers/table/"' in body and 'hx-trigger="every 3s"' in body
    assert "CUDA: NVIDIA H100 80GB HBM3" in body and "3.0 GiB / 79.6 GiB" in body
    assert f'href="/jobs/{job.pk}/">#{job.pk} our run</a>' in body
    assert 'data-worker="gpu0@box" data-state="alive"' in body
    assert 'data-worker="old@box" data-state="lost"' in body and "2 min ago" in body
    table = client.get("/workers/table/").content.decode()
    assert table.lstrip().startswith('<div id="worker-table"') and "<html" not in table


def test_other_teams_admin_sees_workers_but_not_our_job(client, outsider, job):
    register()
    worker_heartbeat(name="gpu0@box", current_job_id=job.pk, memory_used_mib=1)
    client.force_login(outsider)
    body = client.get("/workers/").content.decode()
    assert "gpu0@box" in body and "our run" not in body and "busy (another team)" in body


def test_nav_link_for_admins_only(client, admin, member):
    client.force_login(admin)
    assert 'href="/workers/"' in client.get("/").content.decode()
    client.force_login(member)
    assert 'href="/workers/"' not in client.get("/").content.decode()


def test_workers_gone_longer_than_the_history_setting_are_forgotten(db, settings):
    from studio.workers.services import workers_purge_gone

    settings.WORKER_HISTORY_HOURS = 24
    now = timezone.now()
    for name in ("alive@box", "stopped-recently@box", "stopped-long-ago@box", "lost-recently@box",
                 "lost-long-ago@box"):
        worker_register(name=name, pool="default", hostname="box", pid=1, device="CPU: test", device_memory_mib=1)
    WorkerNode.objects.filter(name="stopped-recently@box").update(stopped_at=now - timezone.timedelta(hours=2))
    WorkerNode.objects.filter(name="stopped-long-ago@box").update(stopped_at=now - timezone.timedelta(hours=30))
    WorkerNode.objects.filter(name="lost-recently@box").update(last_heartbeat_at=now - timezone.timedelta(hours=3))
    WorkerNode.objects.filter(name="lost-long-ago@box").update(last_heartbeat_at=now - timezone.timedelta(days=3))
    assert workers_purge_gone() == 2
    assert sorted(WorkerNode.objects.values_list("name", flat=True)) == [
        "alive@box", "lost-recently@box", "stopped-recently@box"]
