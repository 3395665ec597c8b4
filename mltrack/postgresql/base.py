"""Django's PostgreSQL backend, with a health check that asks the server only
when the connection's socket shows the server has spoken, and prepared
statements for the few statements that ask for them.

CONN_HEALTH_CHECKS runs is_usable() at the first query of every request on a
kept connection, and Django's asks the server `SELECT 1`: one round trip of a
run-logging call's ten, 0.3-1 ms on a busy machine (bench/NOTES.md).
"""

from __future__ import annotations

import os
import select
from typing import Any

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        """Django turns psycopg's prepared statements off (prepare_threshold
        None). Its cursors bind parameters on the client and never prepare
        anyway, so allowing them prepares only what asks, with prepare=True:
        the run-logging API's and the worker's statements (sessions/models.py,
        _PreparedCursor). DB_PREPARED_STATEMENTS=0 turns them off again, for a
        pooler that cannot keep them (PgBouncer in transaction mode before 1.21).
        """
        params = super().get_connection_params()
        if "prepare_threshold" not in self.settings_dict["OPTIONS"]:
            wanted = os.getenv("DB_PREPARED_STATEMENTS", "1") not in ("0", "false")
            # Never reached by a count: only prepare=True prepares.
            params["prepare_threshold"] = 2**31 - 1 if wanted else None
        return params

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
