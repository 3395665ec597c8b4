from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.tasks import fail_lost_sessions


class Command(BaseCommand):
    help = (
        "Fail running sessions whose worker sent no heartbeat for "
        "MLTRACK_HEARTBEAT_TIMEOUT seconds (workers run this check themselves)."
    )

    def handle(self, *args: Any, **options: Any) -> str:
        failed = fail_lost_sessions()
        if not failed:
            return (
                "No lost sessions (heartbeat timeout "
                f"{settings.MLTRACK_HEARTBEAT_TIMEOUT} s)."
            )
        ids = ", ".join(f"#{s.pk}" for s in failed)
        return f"Failed {len(failed)} lost session(s): {ids}"
