"""The job event stream over a WebSocket.

Protocol: after connecting, the client sends {"after": N}, the last seq it
has (0 for none). The server sends every stored event after N, then each
new one as it happens, as {"seq", "kind", "data"}, in order without gaps.
Stored events go out as JSON lists of up to ``settings.EVENT_REPLAY_BATCH``
events (one message each would make a long job's history slow to replay);
a live event is one object. A client accepts both.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from studio.jobs.events import job_group_name
from studio.accounts.policy import Action, allows
from studio.accounts.teams import user_group_name
from studio.jobs.models import Job
from studio.jobs.selectors import EVENT_PAGE_SIZE, job_events_after

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    channel_layer_alias = settings.BROADCAST_CHANNEL_LAYER  # one message per event and web process (settings)

    async def connect(self):
        user = self.scope.get("user")
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.last_seq = None  # None until the client says where it is
        # Refusals accept first and then close with a code, so the browser
        # learns why (a refused handshake only shows up as 1006).
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(_may_watch)(user, self.job_id):
            await self.accept()
            await self.close(code=CLOSE_NOT_FOUND)  # same answer for "other team" and "no such job"
            return
        self.group = job_group_name(self.job_id)
        # The user's own group: told when their access changes (removed from a team), this socket
        # checks again at once rather than streaming on until it closes.
        self.user_group = user_group_name(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(self.user_group, self.channel_name)

    async def access_changed(self, message):
        if not await database_sync_to_async(_may_watch)(self.scope["user"], self.job_id):
            await self.close(code=CLOSE_NOT_FOUND)

    async def receive_json(self, content, **kwargs):
        after = content.get("after", 0) if isinstance(content, dict) else 0
        self.last_seq = after if isinstance(after, int) and after >= 0 else 0
        await self._send_stored()

    async def job_event(self, message):
        """A live event from the group. Consumers handle one message at a time,
        so this never interleaves with the catch-up in ``_send_stored``."""
        if self.last_seq is None or message["seq"] <= self.last_seq:
            return  # the client has it, or will get it when it asks
        if message["seq"] > self.last_seq + 1:
            await self._send_stored()  # a push was missed: read the gap from the database
            return
        await self._send(message)

    async def _send_stored(self):
        batch = max(1, settings.EVENT_REPLAY_BATCH)
        while True:
            events = await database_sync_to_async(job_events_after)(job_id=self.job_id, after=self.last_seq)
            for start in range(0, len(events), batch):
                part = events[start:start + batch]  # already {seq, kind, data} (JobEvent.as_message)
                await self.send_json(part)
                self.last_seq = part[-1]["seq"]
            if len(events) < EVENT_PAGE_SIZE:
                return

    async def _send(self, event: dict):
        await self.send_json({"seq": event["seq"], "kind": event["kind"], "data": event["data"]})
        self.last_seq = event["seq"]


def _may_watch(user, job_id: int) -> bool:
    """The access rule's "view" for the job (False for no such job: the same answer as another team's)."""
    team_id = Job.objects.filter(pk=job_id).values_list("team_id", flat=True).first()
    return team_id is not None and allows(user=user, action=Action.VIEW, team_id=team_id)
