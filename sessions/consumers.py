from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from sessions import events
from sessions.models import TrainingSession

# Close codes in the 4000-4999 range are ours: the page shows why it was refused.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class TrainingConsumer(AsyncJsonWebsocketConsumer):
    """Pushes training events to the browser; the browser never sends anything.

    /ws/training/ streams every session the user may see; /ws/training/<id>/ one.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.joined: list[str] = []
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        session_id = self.scope["url_route"]["kwargs"].get("session_id")
        if session_id is not None:
            if not await self._may_see(user, session_id):
                await self.close(code=CLOSE_NOT_FOUND)
                return
            groups = [events.session_group(session_id)]
        elif user.is_staff:
            groups = [events.STAFF_GROUP]
        else:
            groups = [events.user_group(user.pk)]
        # The process listens to the groups once for all its sockets (events.py).
        fanout = events.local_fanout()
        for group in groups:
            await fanout.join(group, self)
            self.joined.append(group)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        fanout = events.local_fanout()
        for group in self.joined:
            await fanout.leave(group, self)

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
