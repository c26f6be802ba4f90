"""The node's ledger outbox: signed entries kept in its database until logged.

Each entry the node writes is signed and inserted into ``ledger_outbox`` in
the transaction of the change it records (:meth:`Outbox.write`), so it is
durable before the operation is acknowledged; a thread sends the outbox to
the log, oldest first, and deletes what the log accepted.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airfed.node_api._db import LedgerOutbox, utcnow
from airfed.sdk._ledger import Statement, sign_statements

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

_OUTBOX_BATCH = 500
_MAX_PAUSE = 30.0


class Outbox:
    """The node's signed entries in its database, sent to the log by a thread.

    ``write`` signs statements and inserts them on the caller's connection,
    inside the caller's transaction. The thread sends the oldest entries
    first (the log answers once they are durable), deletes them, and on an
    unreachable log retries with a growing pause; an entry the log refuses
    keeps its row with the log's answer in ``problem`` and is not resent.
    The log takes an entry it already holds as a success, so an entry sent
    again after a crash between sending and deleting is not duplicated.
    """

    def __init__(
        self,
        engine: Engine,
        profile: Path,
        *,
        address: str,
        author: str,
        identity_key: Any,
    ) -> None:
        self._engine = engine
        self._profile = profile
        self._address = address
        self._author = author
        self._identity_key = identity_key
        self._client: Any = None
        self._client_class: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_by = 0.0
        self._thread = threading.Thread(
            target=self._run, name="ledger-outbox", daemon=True
        )

    def start(self) -> None:
        # Imported here, on the starting thread: a package that two threads
        # import at once can be seen half-initialized by one of them.
        from airfed.ledger.client import LedgerClient

        self._client_class = LedgerClient
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, drain: float) -> None:
        """Send what is left for up to ``drain`` seconds, then stop."""
        self._stop_by = time.monotonic() + drain
        self._stop.set()
        self._wake.set()
        self._thread.join(drain + 1.0)
        left = self.pending()
        if left:
            logger.warning(
                "ledger entries kept in the outbox author=%s pending=%d",
                self._author,
                left,
            )

    def pending(self) -> int:
        query = sa.select(sa.func.count()).where(LedgerOutbox.problem.is_(None))
        try:
            with self._engine.connect() as connection:
                return int(connection.execute(query).scalar_one())
        except sa.exc.SQLAlchemyError:
            return -1

    # -- writing

    def write(self, connection: Connection, statements: list[Statement]) -> bool:
        """Sign ``statements`` and insert them; False if none could be signed."""
        entries = sign_statements(
            statements, author=self._author, identity_key=self._identity_key
        )
        rows = [
            {
                "kind": str(entry.kind),
                "subject_key": entry.key,
                "data": entry.data,
                "created_at": utcnow(),
            }
            for entry in entries
        ]
        if rows:
            connection.execute(sa.insert(LedgerOutbox), rows)
        return bool(rows)

    # -- the sending thread

    def _stopping(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._stop_by

    def _run(self) -> None:
        from airfed.ledger.errors import LedgerUnavailable

        pause = 0.5
        while not self._stopping():
            self._wake.clear()
            try:
                rows = self._oldest()
                if rows:
                    self._send(rows)
                    pause = 0.5
                    continue
            except (LedgerUnavailable, sa.exc.SQLAlchemyError) as exc:
                logger.warning(
                    "ledger outbox not sent, will retry author=%s error=%s",
                    self._author,
                    exc,
                )
                self._close_client()
                if self._stop.is_set():
                    break
                self._stop.wait(pause)
                pause = min(_MAX_PAUSE, pause * 2)
                continue
            except Exception:
                # Kept on disk: the next round (or the next start) tries again.
                logger.exception("ledger outbox failed author=%s", self._author)
                self._stop.wait(pause)
                pause = min(_MAX_PAUSE, pause * 2)
                continue
            if self._stop.is_set():
                break
            self._wake.wait(1.0)
        self._close_client()

    def _oldest(self) -> list[Any]:
        query = (
            sa.select(LedgerOutbox.id, LedgerOutbox.kind, LedgerOutbox.subject_key)
            .add_columns(LedgerOutbox.data)
            .where(LedgerOutbox.problem.is_(None))
            .order_by(LedgerOutbox.id)
            .limit(_OUTBOX_BATCH)
        )
        with self._engine.connect() as connection:
            return list(connection.execute(query))

    def _send(self, rows: list[Any]) -> None:
        """Append ``rows``; the log's refusal of one entry spares the others."""
        from airfed.ledger.errors import LedgerError, LedgerUnavailable

        try:
            self._client_of_log().append([row.data for row in rows], wait=True)
        except LedgerUnavailable:
            raise
        except LedgerError as exc:
            if len(rows) > 1:
                for row in rows:
                    self._send([row])
                return
            logger.error(
                "ledger refused entry kind=%s key=%s error=%s",
                rows[0].kind,
                rows[0].subject_key,
                exc,
            )
            self._mark_refused(rows[0].id, str(exc))
            return
        with self._engine.begin() as connection:
            connection.execute(
                sa.delete(LedgerOutbox).where(
                    LedgerOutbox.id.in_([row.id for row in rows])
                )
            )
        logger.debug(
            "ledger entries sent author=%s entries=%d", self._author, len(rows)
        )

    def _mark_refused(self, row_id: int, problem: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                sa.update(LedgerOutbox)
                .where(LedgerOutbox.id == row_id)
                .values(problem=problem[:2000])
            )

    def _client_of_log(self) -> Any:
        if self._client is None:
            self._client = self._client_class(
                self._address, self._profile, timeout=10.0
            )
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
