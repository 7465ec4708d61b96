"""Signed webhooks, delivered to a real HTTP server on 127.0.0.1."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.api.models import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from studio.notifications.webhooks import (WebhookError, webhook_delivery_send, webhook_endpoint_create,
                                           webhook_signature, webhook_signature_verify, webhooks_deliver_for_job)
from studio.datasets.services import dataset_create_from_file
from studio.jobs.services import job_create_train, job_finish


class Receiver:
    """An HTTP server that records every request and answers with the next
    of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses=(200,), location: str = ""):
        self.requests, self.statuses, self.location = [], list(statuses), location
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/studio"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(autouse=True)
def instant_retries(settings):
    settings.WEBHOOK_RETRY_DELAYS_S = (0, 0)


@pytest.fixture(autouse=True)
def loopback_receivers_allowed(settings):
    """The test receivers listen on 127.0.0.1, which webhooks refuse unless an admin allows it, as an intranet
    receiver would be allowed."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def admin(team):
    return user_create(username="ada", password="pw-ada-123456", team=team, role=Membership.Role.ADMIN)


@pytest.fixture
def job(member, team, tiny_base_model, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"max_steps": 2}, method_params={}, name="nightly")


def endpoint_for(admin, team, url, events=WEBHOOK_EVENT_TYPES):
    return webhook_endpoint_create(user=admin, team=team, url=url, events=list(events))


def test_finished_job_is_posted_signed(admin, team, job, receiver):
    endpoint = endpoint_for(admin, team, receiver.url)
    job_finish(job_id=job.pk, status="succeeded", message="Finished 2 steps")
    deliveries = webhooks_deliver_for_job(job.pk)
    assert len(deliveries) == 1 and len(receiver.requests) == 1
    request = receiver.requests[0]
    body, header = request["body"], request["headers"]["Studio-Signature"]
    payload = json.loads(body)
    assert request["path"] == "/hooks/studio" and request["headers"]["Content-Type"] == "application/json"
    assert payload["type"] == "fine_tuning.job.succeeded" and payload["id"].startswith("evt_")
    assert payload["data"]["job"]["id"] == job.pk and payload["data"]["job"]["status"] == "succeeded"
    assert abs(payload["created_at"] - time.time()) < 60
    # The check a receiver does, written out without the studio's helper:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(endpoint.secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected) and abs(int(fields["t"]) - time.time()) < 60
    assert webhook_signature_verify(secret=endpoint.secret, body=body, header=header)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.error) == ("succeeded", 1, 200, "")
    assert delivery.event_id == payload["id"] == request["headers"]["Studio-Event-Id"]


def test_failed_job_carries_its_error(admin, team, job, receiver):
    endpoint_for(admin, team, receiver.url)
    job_finish(job_id=job.pk, status="failed", failure_kind="user_error", message="row 2: empty output")
    webhooks_deliver_for_job(job.pk)
    payload = json.loads(receiver.requests[0]["body"])
    assert payload["type"] == "fine_tuning.job.failed"
    assert payload["data"]["job"]["error"] == {"kind": "user_error", "message": "row 2: empty output"}


def test_verification_refuses_tampering_other_secrets_and_old_timestamps():
    body, now = b'{"id":"evt_1"}', int(time.time())
    header = webhook_signature(secret="whsec_a", body=body, timestamp=now)
    assert webhook_signature_verify(secret="whsec_a", body=body, header=header)
    assert not webhook_signature_verify(secret="whsec_a", body=body + b" ", header=header)
    assert not webhook_signature_verify(secret="whsec_b", body=body, header=header)
    old = webhook_signature(secret="whsec_a", body=body, timestamp=now - 3600)
    assert not webhook_signature_verify(secret="whsec_a", body=body, header=old)
    assert not webhook_signature_verify(secret="whsec_a", body=body, header="garbage")


def test_retries_until_a_2xx_and_records_attempts(admin, team, job):
    receiver = Receiver(statuses=(500, 503, 200))
    try:
        endpoint_for(admin, team, receiver.url)
        job_finish(job_id=job.pk, status="cancelled", message="stopped")
        webhooks_deliver_for_job(job.pk)
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("succeeded", 3, 200)
    assert len(receiver.requests) == 3 and delivery.event_type == "fine_tuning.job.cancelled"
    assert len({r["body"] for r in receiver.requests}) == 1  # the same event each time


def test_gives_up_after_the_last_try(admin, team, job):
    receiver = Receiver(statuses=(500,))
    try:
        endpoint_for(admin, team, receiver.url)
        job_finish(job_id=job.pk, status="succeeded")
        webhooks_deliver_for_job(job.pk)
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 3, 500)
    assert "HTTP 500" in delivery.error and delivery.delivered_at is None


def test_redirects_are_not_followed(admin, team, job):
    receiver = Receiver(statuses=(302,), location="http://127.0.0.1:9/elsewhere")
    try:
        endpoint_for(admin, team, receiver.url)
        job_finish(job_id=job.pk, status="succeeded")
        webhooks_deliver_for_job(job.pk)
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and delivery.response_status == 302 and len(receiver.requests) == 3


def test_unreachable_url_is_recorded(admin, team, job):
    closed = Receiver()
    url = closed.url
    closed.close()
    endpoint_for(admin, team, url)
    job_finish(job_id=job.pk, status="succeeded")
    webhooks_deliver_for_job(job.pk)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and delivery.response_status is None
    # The same words for a closed port, a timeout or an unreachable host: no port scanning through the log.
    assert delivery.error == "could not connect to the receiver (refused, timed out or unreachable)"


def test_only_subscribed_active_endpoints_of_the_jobs_team_and_only_once(admin, team, job, receiver, outsider):
    endpoint_for(admin, team, receiver.url, events=["fine_tuning.job.failed"])
    inactive = endpoint_for(admin, team, receiver.url + "/inactive")
    WebhookEndpoint.objects.filter(pk=inactive.pk).update(active=False)
    endpoint_for(outsider, outsider.memberships.get().team, receiver.url + "/rivals")
    assert webhooks_deliver_for_job(job.pk) == []  # still queued: nothing to say
    job_finish(job_id=job.pk, status="succeeded")
    assert webhooks_deliver_for_job(job.pk) == [] and receiver.requests == []
    subscribed = endpoint_for(admin, team, receiver.url + "/all")
    assert len(webhooks_deliver_for_job(job.pk)) == 1
    assert webhooks_deliver_for_job(job.pk) == []  # a second call sends nothing twice
    assert [r["path"] for r in receiver.requests] == ["/hooks/studio/all"]
    assert WebhookDelivery.objects.get().endpoint == subscribed


def test_a_retry_is_booked_after_the_back_off_not_waited_for(admin, team, job, settings):
    # On a worker each retry is a task of its own with the back-off as its countdown (worker/webhooks.py).
    settings.WEBHOOK_RETRY_DELAYS_S = (5, 30)
    receiver = Receiver(statuses=(503, 200))
    booked = []
    try:
        endpoint_for(admin, team, receiver.url)
        job_finish(job_id=job.pk, status="succeeded")
        started = time.monotonic()
        [delivery] = webhooks_deliver_for_job(job.pk, schedule_retry=lambda pk, delay: booked.append((pk, delay)))
        assert time.monotonic() - started < 5  # nobody waited through the back-off
        assert delivery.status == "pending" and delivery.attempts == 1 and booked == [(delivery.pk, 5)]
        webhook_delivery_send(delivery=delivery, schedule_retry=lambda pk, delay: booked.append((pk, delay)))
    finally:
        receiver.close()
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 2 and len(receiver.requests) == 2
    assert booked == [(delivery.pk, 5)]


def test_only_team_admins_register_http_urls(member, admin, team):
    with pytest.raises(WebhookError):
        webhook_endpoint_create(user=member, team=team, url="https://example.com/h", events=list(WEBHOOK_EVENT_TYPES))
    for url in ("ftp://example.com/h", "file:///etc/passwd", "http://"):
        with pytest.raises(WebhookError) as caught:
            webhook_endpoint_create(user=admin, team=team, url=url, events=list(WEBHOOK_EVENT_TYPES))
        assert caught.value.field == "url"
    with pytest.raises(WebhookError):
        webhook_endpoint_create(user=admin, team=team, url="https://example.com/h", events=["job.exploded"])


# ---- the page ------------------------------------------------------------------


def test_admin_adds_sees_deliveries_and_deletes(client, admin, team, job, receiver):
    client.force_login(admin)
    response = client.post("/accounts/webhooks/", {"team": str(team.pk), "url": receiver.url,
                                                   "events": ["fine_tuning.job.succeeded"]}, HTTP_HX_REQUEST="true")
    endpoint = WebhookEndpoint.objects.get()
    page = response.content.decode()
    assert response.status_code == 200 and endpoint.secret in page and endpoint.events == ["fine_tuning.job.succeeded"]
    job_finish(job_id=job.pk, status="succeeded")
    webhooks_deliver_for_job(job.pk)
    page = client.get("/accounts/webhooks/").content.decode()
    assert receiver.url in page and "fine_tuning.job.succeeded" in page and endpoint.secret not in page
    assert client.post(f"/accounts/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.exists()


def test_members_and_other_teams_cannot_manage_webhooks(client, member, admin, team, outsider):
    endpoint = endpoint_for(admin, team, "https://example.com/hook")
    client.force_login(member)
    assert "Only a team admin" in client.get("/accounts/webhooks/").content.decode()
    response = client.post("/accounts/webhooks/", {"team": str(team.pk), "url": "https://evil.example/h",
                                                   "events": list(WEBHOOK_EVENT_TYPES)})
    assert response.status_code == 400 and WebhookEndpoint.objects.count() == 1
    assert client.post(f"/accounts/webhooks/{endpoint.pk}/delete/").status_code == 404
    client.force_login(outsider)
    assert "example.com/hook" not in client.get("/accounts/webhooks/").content.decode()
    assert client.post(f"/accounts/webhooks/{endpoint.pk}/delete/").status_code == 404
    assert WebhookEndpoint.objects.count() == 1


# ---- no way into the studio's own network ----------------------------------------


@pytest.fixture
def resolver(monkeypatch):
    """A resolver stub: names map to the addresses given, and every connection attempt is recorded; nothing
    leaves the machine (a refused address must be refused before any connection is made)."""
    import socket

    from studio.notifications import outbound

    names, connections = {}, []
    real_create_connection, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "127.0.0.1":  # the connection to the checked address itself (no lookup is made for it)
            return real_getaddrinfo(host, port, *args, **kwargs)
        if host not in names:
            raise socket.gaierror(f"no such host {host} (stub)")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]

    def create_connection(address, *args, **kwargs):
        connections.append(address)
        assert address[0] == "127.0.0.1", f"a test connection must stay on loopback, not {address}"
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(outbound.socket, "create_connection", create_connection)
    return names, connections


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.10", "169.254.169.254", "127.0.0.1",
                                     "100.64.0.1", "::1", "fd00::1", "0.0.0.0"])
def test_a_name_that_resolves_inside_the_network_is_refused_before_connecting(admin, team, job, resolver, settings,
                                                                             address):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    names, connections = resolver
    names["hooks.example.test"] = address
    endpoint_for(admin, team, "http://hooks.example.test:8080/h")
    job_finish(job_id=job.pk, status="succeeded")
    webhooks_deliver_for_job(job.pk)
    delivery = WebhookDelivery.objects.get()
    assert connections == [] and delivery.status == "failed" and delivery.response_status is None
    assert delivery.error.startswith("refused: the URL's host is not a public address")
    assert address not in delivery.error and "8080" not in delivery.error  # nothing to learn about the network


def test_the_connection_goes_to_the_address_that_was_checked(admin, team, job, receiver, resolver, settings):
    # An allowed intranet name: the only way to reach the receiver is the address the check resolved,
    # since the name exists nowhere else (a second lookup, as a rebinding attack needs, would fail).
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.intranet.test"]
    names, connections = resolver
    names["hooks.intranet.test"] = "127.0.0.1"
    port = receiver.url.split(":")[2].split("/")[0]
    endpoint_for(admin, team, f"http://hooks.intranet.test:{port}/hooks/studio")
    job_finish(job_id=job.pk, status="succeeded")
    webhooks_deliver_for_job(job.pk)
    assert WebhookDelivery.objects.get().status == "succeeded" and len(receiver.requests) == 1
    assert connections == [("127.0.0.1", int(port))]
    assert receiver.requests[0]["headers"]["Host"] == f"hooks.intranet.test:{port}"


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data/",
                                 "http://localhost:8000/admin/", "http://[::1]/", "http://10.0.0.5/hook",
                                 "http://api.localhost/hook"])
def test_inside_addresses_are_refused_when_the_webhook_is_added(admin, team, settings, url):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(WebhookError) as refused:
        endpoint_for(admin, team, url)
    assert refused.value.field == "url" and "WEBHOOK_ALLOWED_HOSTS" in str(refused.value)
