from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from sessions import events
from sessions.models import TrainingSession

logger = logging.getLogger(__name__)

# Close codes in the 4000-4999 range are ours: the page shows why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class TrainingConsumer(AsyncJsonWebsocketConsumer):
    """Pushes training events to the browser; the browser never sends anything.

    /ws/training/ streams every session the user may see; /ws/training/<id>/ one.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.audience: str | None = None
        self.write_frame: Callable[[bytes], bool] | None = None
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        session_id = self.scope["url_route"]["kwargs"].get("session_id")
        if session_id is not None:
            if not await self._may_see(user, session_id):
                await self.close(code=CLOSE_NOT_FOUND)
                return
            audience = events.session_audience(session_id)
        elif user.is_staff:
            audience = events.STAFF_AUDIENCE
        else:
            audience = events.user_audience(user.pk)
        # The process listens once for all its sockets (events.LocalFanout).
        try:
            await events.local_fanout().join(audience, self)
        except redis.RedisError:
            # Redis is down: refuse rather than show a socket that hears nothing.
            # The page retries with backoff, then backfills.
            logger.warning("Refused a WebSocket: cannot subscribe to events")
            await self.close(code=events.CLOSE_TRY_AGAIN)
            return
        self.audience = audience
        self.write_frame = events.frame_writer(self.scope.get(events.SERVER_SEND))
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.audience is not None:
            await events.local_fanout().leave(self.audience, self)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        # Never parse or act on what a browser sends: say so and carry on.
        await self.send_json(
            {"type": "error", "error": "This socket only sends events."}
        )

    @database_sync_to_async
    def _may_see(self, user: Any, session_id: int) -> bool:
        return TrainingSession.objects.for_user(user).filter(pk=session_id).exists()
