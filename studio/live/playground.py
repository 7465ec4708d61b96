"""The playground's WebSocket: the browser sends chat requests, the worker
streams the replies back to this consumer's own channel.

Browser → server: {"artifacts": [id, id?], "prompt", "system_prompt",
"temperature", "top_p", "max_new_tokens"}. Server → browser:
{"type": "accepted", "request_id", "sides"}, then per side
{"type": "piece", "request_id", "side", "text"} … and
{"type": "done", "request_id", "side", "tokens", "seconds"} or
{"type": "error", "request_id"?, "side"?, "message" | "errors"}.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from studio.artifacts.playground import playground_request
from studio.live.consumers import CLOSE_UNAUTHENTICATED
from tuning.errors import ConfigError


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "message": "send a JSON object"})
            return
        try:
            accepted = await database_sync_to_async(playground_request)(
                user=self.scope["user"], request=content, reply_channel=self.channel_name)
        except ConfigError as exc:
            await self.send_json({"type": "error", "errors": exc.errors})
            return
        await self.send_json({"type": "accepted", **accepted})

    # Messages from the worker, sent to this consumer's channel.
    async def playground_piece(self, message):
        await self.send_json({key: value for key, value in message.items() if key != "type"} | {"type": "piece"})

    async def playground_done(self, message):
        await self.send_json({key: value for key, value in message.items() if key != "type"} | {"type": "done"})

    async def playground_error(self, message):
        await self.send_json({key: value for key, value in message.items() if key != "type"} | {"type": "error"})
