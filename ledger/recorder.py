"""``LedgerRecorder``: hand entries to the log without waiting for it.

For callers on a hot path (the Airflow listener, a node finishing a task):
``record(entry)`` only queues; a background thread sends what is queued in
batches every ``flush_interval`` seconds, without waiting for durability
(the log integrates within about a second). While the log cannot be
reached the batch is kept and retried with backoff; an entry the log
refuses is logged at ERROR and dropped, since resending cannot help.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry
from airfed.ledger.errors import LedgerError, LedgerUnavailable

__all__ = ["LedgerRecorder"]

logger = logging.getLogger(__name__)


class LedgerRecorder:
    """A background sender of entries to one log."""

    def __init__(
        self,
        client: LedgerClient,
        *,
        flush_interval: float = 0.2,
        max_batch: int = 1000,
        max_queued: int = 100_000,
    ) -> None:
        self.client = client
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: deque[Entry] = deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="ledger-recorder", daemon=True
        )
        self._thread.start()

    def record(self, entry: Entry) -> None:
        """Queue an entry; never waits for the network."""
        with self._cond:
            if self._closing:
                raise LedgerError("the ledger recorder is closed")
            if len(self._queue) >= self._max_queued:
                raise LedgerError(
                    f"{self._max_queued} ledger entries wait to be sent; "
                    "the log has been unreachable for too long"
                )
            self._queue.append(entry)
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued entry was sent; False on timeout."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: not self._queue and not self._in_flight, timeout
            )

    def close(self, timeout: float = 30.0) -> bool:
        """Send what is queued (up to ``timeout``), then stop."""
        sent = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return sent

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight

    def _run(self) -> None:
        backoff = self._interval
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if self._closing and not self._queue:
                    return
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = len(batch)
            sent = self._send(batch)
            with self._cond:
                if not sent:
                    self._queue.extendleft(reversed(batch))
                self._in_flight = 0
                self._cond.notify_all()
                closing = self._closing
            if sent:
                backoff = self._interval
            elif not closing:
                backoff = min(backoff * 2, 5.0)
            else:
                return
            with self._cond:
                self._cond.wait(backoff if not sent else self._interval)

    def _send(self, batch: list[Entry]) -> bool:
        """True when the batch is done with (sent, or refused for good).

        The log refuses a batch as a whole; then each entry is sent alone so
        that only the ones it refuses are dropped.
        """
        try:
            self.client.append(batch, wait=False)
        except LedgerUnavailable as exc:
            logger.warning("ledger unreachable entries=%d error=%s", len(batch), exc)
            return False
        except LedgerError as exc:
            if len(batch) > 1:
                return all([self._send([entry]) for entry in batch])
            logger.error(
                "ledger refused entry key=%s kind=%s error=%s",
                batch[0].key,
                batch[0].kind,
                exc,
            )
        return True
