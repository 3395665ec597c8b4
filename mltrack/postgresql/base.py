"""Django's PostgreSQL backend, with a health check that asks the server only
when the connection's socket shows the server has spoken.

CONN_HEALTH_CHECKS runs is_usable() at the first query of every request on a
kept connection, and Django's asks the server `SELECT 1`: one round trip of a
run-logging call's ten, 0.3-1 ms on a busy machine (bench/NOTES.md).
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """An idle connection whose socket has nothing to read is usable.

        A server that ends a connection (restarted, or the backend terminated)
        sends its error and closes the socket, or the kernel closes it: either
        way the socket turns readable, and only then is the server asked, as
        Django does. Nothing else arrives unasked on an idle connection here (no
        LISTEN). A silent network cut goes unseen, as it would until SELECT 1
        timed out.
        """
        connection = self.connection
        if connection is None or connection.closed:
            return False
        if connection.info.transaction_status != TransactionStatus.IDLE:
            return super().is_usable()
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
        except (OSError, ValueError):  # the socket itself is gone
            return False
        return super().is_usable() if readable else True
