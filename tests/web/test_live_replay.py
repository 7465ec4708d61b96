"""The job stream's catch-up comes as lists of stored events (at most
EVENT_REPLAY_BATCH a message, in order); a live event comes as one object."""

import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator

from studio.jobs.events import job_event_record
from studio.jobs.state import job_create
from studio.live.consumers import JobEventsConsumer


@pytest.mark.django_db(transaction=True)  # the consumer reads the database from another thread
def test_catch_up_is_batched_and_live_events_follow_one_by_one(member, team, settings):
    settings.EVENT_REPLAY_BATCH = 2
    job = job_create(kind="train", team=team, owner=member, config={})  # seq 1: queued
    for step in (1, 2):
        job_event_record(job_id=job.pk, kind="metrics", data={"step": step, "loss": 1.0})  # seq 2, 3

    async def watch():
        scope = {"type": "websocket", "path": f"/ws/jobs/{job.pk}/", "headers": [], "subprotocols": [],
                 "user": member, "url_route": {"args": (), "kwargs": {"job_id": job.pk}}}
        client = ApplicationCommunicator(JobEventsConsumer.as_asgi(), scope)
        await client.send_input({"type": "websocket.connect"})
        await client.receive_output(timeout=5)
        await client.send_input({"type": "websocket.receive", "text": json.dumps({"after": 0})})
        messages = [json.loads((await client.receive_output(timeout=5))["text"]) for _ in range(2)]
        return client, messages

    async def live(client):
        from channels.db import database_sync_to_async

        await database_sync_to_async(job_event_record)(job_id=job.pk, kind="log", data={"message": "hi"})
        message = json.loads((await client.receive_output(timeout=5))["text"])
        await client.send_input({"type": "websocket.disconnect", "code": 1000})
        await client.wait(timeout=5)
        return message

    async def run():
        client, messages = await watch()
        return messages, await live(client)

    (first, second), live_message = async_to_sync(run)()
    assert [e["seq"] for e in first] == [1, 2] and [e["seq"] for e in second] == [3]
    assert first[0]["kind"] == "status" and second[0]["data"] == {"step": 2, "loss": 1.0}
    assert live_message == {"seq": 4, "kind": "log", "data": {"message": "hi"}}
