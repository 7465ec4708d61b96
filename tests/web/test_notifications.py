"""Job owners hear how their jobs ended: in the app, and by e-mail when set up."""

import pytest
from django.core import mail
from django.test import Client

from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job
from studio.jobs.services import job_create_train, job_finish
from studio.notifications.models import Notification


@pytest.fixture
def job(member, team, tiny_base_model, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"max_steps": 1}, method_params={}, name="nightly run")


def test_the_owner_is_told_in_the_app_and_the_bell_counts_it(member_client, member, job, outsider):
    job_finish(job_id=job.pk, status=Job.Status.FAILED, failure_kind=Job.FailureKind.USER_ERROR,
               message="row 3 has no output")
    [notice] = Notification.objects.filter(user=member)
    assert notice.level == "error" and notice.message == (
        f"Train job #{job.pk} “nightly run” failed: row 3 has no output")

    page = member_client.get("/").content.decode()
    assert 'class="badge unread">1<' in page
    assert "row 3 has no output" in member_client.get("/notifications/").content.decode()
    member_client.post("/notifications/read/")
    assert 'class="badge unread"' not in member_client.get("/notifications/bell/").content.decode()

    rival = Client()
    rival.force_login(outsider)
    assert "nightly run" not in rival.get("/notifications/").content.decode()


def test_an_email_goes_out_when_a_mail_server_is_configured(member, job, settings,
                                                            django_capture_on_commit_callbacks):
    member.email = "alice@example.com"
    member.save()
    settings.EMAIL_NOTIFICATIONS, settings.STUDIO_BASE_URL = True, "https://studio.example.com"
    with django_capture_on_commit_callbacks(execute=True):
        job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="Finished 1 steps")
    [message] = mail.outbox
    assert message.to == ["alice@example.com"] and "succeeded" in message.subject
    assert f"https://studio.example.com/jobs/{job.pk}/" in message.body


def test_no_email_without_a_mail_server(member, job, settings, django_capture_on_commit_callbacks):
    member.email = "alice@example.com"
    member.save()
    settings.EMAIL_NOTIFICATIONS = False
    with django_capture_on_commit_callbacks(execute=True):
        job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED)
    assert mail.outbox == [] and Notification.objects.filter(user=member).count() == 1
