"""Sending a reply's text pieces to a channel (the /v1/ view's, or the
playground WebSocket's) while the model writes it.

The sends run on the process's send loop (``studio.channel_sends``: one
event loop and Redis connection per process, not one per message), and
pieces written while a message is on its way, or within FLUSH_INTERVAL_S
of it, go together in the next message: a fast model is not held back by
one Redis message per token (four Redis commands in channels-redis, four
more in the web process receiving it, and an event for the client to
parse), and a slow one still shows each token as it comes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from channels.layers import get_channel_layer

from studio.channel_sends import SEND_LOOP, SEND_TIMEOUT_S, send_now

log = logging.getLogger(__name__)
# At most one message per this many seconds after the first (25 a second): a fast model's tokens go a few
# to a message instead of one Redis message, relay and client event each, and text shown 40 ms late reads
# as smoothly as text shown per token.
FLUSH_INTERVAL_S = 0.04


class PieceRelay:
    """A reply's pieces to ``channel``, in order, as ``message(text)``.

    The first piece goes alone, and ``put`` waits for it (one send): the
    time to the first token is what a user notices. After that ``put``
    never waits for Redis: a piece goes out when the previous message is
    done and at least ``FLUSH_INTERVAL_S`` after it, with every piece
    written meanwhile. ``close`` sends what is left at once, waits until
    all is sent and raises what a send raised; ``end`` then sends the
    message that ends the reply. ``messages`` counts the messages sent."""

    def __init__(self, channel: str, message: Callable[[str], dict], *, layer=None):
        self.channel, self.message, self.layer = channel, message, layer or get_channel_layer()
        self.lock = threading.Lock()
        self.pending: list[str] = []
        self.sender = None  # the running drain's future, while one runs
        self.last = None  # the latest drain's future
        self.messages = 0
        self.failure: BaseException | None = None  # what a send raised; close raises it
        self.ending = asyncio.Event()  # set by close: no more waiting between messages

    def put(self, text: str) -> None:
        if self.messages == 0 and self.last is None and self.failure is None:
            try:
                send_now(self.channel, self.message(text), layer=self.layer)
            except BaseException as exc:
                self.failure = exc
                raise
            self.messages = 1
            return
        with self.lock:
            if self.failure is not None:
                return
            self.pending.append(text)
            if self.sender is not None:
                return  # the running drain takes it with the next message
            self.sender = self.last = asyncio.run_coroutine_threadsafe(self._drain(), SEND_LOOP.get())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                with self.lock:
                    if not self.pending:
                        self.sender = None
                        return
                    text, self.pending = "".join(self.pending), []
                started = loop.time()
                await self.layer.send(self.channel, self.message(text))
                self.messages += 1
                wait = FLUSH_INTERVAL_S - (loop.time() - started)
                if wait > 0 and not self.ending.is_set():
                    try:
                        await asyncio.wait_for(self.ending.wait(), wait)
                    except TimeoutError:
                        pass
        except BaseException as exc:
            with self.lock:
                self.sender, self.failure = None, exc
            raise

    def close(self) -> None:
        SEND_LOOP.get().call_soon_threadsafe(self.ending.set)
        with self.lock:
            last = self.last
        if last is not None:
            last.result(SEND_TIMEOUT_S)
        if self.failure is not None:
            raise self.failure

    def end(self, message: dict, *, failed: bool = False) -> None:
        """Send ``message`` (done, or with ``failed`` an error) after every
        piece, so that it ends the reply. After a failure a piece that could
        not be sent is logged and the error message still tried."""
        try:
            self.close()
        except Exception:
            if not failed:
                raise
            log.exception("sending the reply's pieces failed")
        send_now(self.channel, message, layer=self.layer)
