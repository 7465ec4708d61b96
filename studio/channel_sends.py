"""Channel-layer sends from synchronous code (a Celery worker, a view's
thread) on one event loop per process.

Why not ``async_to_sync(layer.send)`` per message: in a thread without an
event loop each call starts a thread and an event loop, and channels-redis
opens a Redis connection for each new loop (and closes it with the loop).
A worker records an event per training step and a reply's tokens as they
come; that work competed with the training or the generation for the
worker's cores. Here one event loop per process, in its own thread, keeps
one connection per layer (a connection Redis closed is replaced on the
next command: ``retry_on_error`` in settings.REDIS_HOSTS).
"""

from __future__ import annotations

import asyncio
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer

SEND_TIMEOUT_S = 60  # a send that takes longer means Redis is gone: the caller fails rather than hangs


class _SendLoop:
    """The process's event loop for channel sends, started on first use
    (and again in a forked child, which does not inherit the thread)."""

    def __init__(self):
        self.lock, self.loop, self.pid = threading.Lock(), None, None

    def get(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.pid != os.getpid():
                self.loop, self.pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self.loop.run_forever, name="channel-sends", daemon=True).start()
            return self.loop


SEND_LOOP = _SendLoop()


def send_now(channel: str, message: dict, *, layer) -> None:
    """One message to ``channel``, from a thread without an event loop, on the process's send loop."""
    asyncio.run_coroutine_threadsafe(layer.send(channel, message),
                                     SEND_LOOP.get()).result(SEND_TIMEOUT_S)


def group_send_now(group: str, message: dict, *, layer) -> None:
    """One message to every channel in ``group``, from synchronous code, on the send loop."""
    if isinstance(layer, InMemoryChannelLayer):
        # its queues belong to the loop its consumers run on (one process, no Redis: the web tests), which
        # async_to_sync finds from a thread that loop started
        async_to_sync(layer.group_send)(group, message)
        return
    asyncio.run_coroutine_threadsafe(layer.group_send(group, message),
                                     SEND_LOOP.get()).result(SEND_TIMEOUT_S)
