"""Requests that wait for a task to end, woken as soon as it does.

``GET /tasks/{key}?wait=SECONDS`` watches the task here *before* it reads the
task, so an end that lands between the read and the wait is not missed. The
thread that sets a final status calls :meth:`TaskEndings.ended`. Each waiting
request is an :class:`asyncio.Event` on the server's event loop, set through
``call_soon_threadsafe``: a waiting request holds no worker thread and costs
nothing until it is woken. :meth:`TaskEndings.close` wakes every waiter and
answers later ones at once, so a stopping node does not hold requests open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["TaskEndings"]

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


def _wake(waiter: _Waiter) -> None:
    loop, event = waiter
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
        loop.call_soon_threadsafe(event.set)


class TaskEndings:
    """The requests waiting for each task to end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._closed = False

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        """An event set when task ``key`` ends or the node stops."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._closed:
                waiter[1].set()
            else:
                self._waiters.setdefault(key, []).append(waiter)
        try:
            yield waiter[1]
        finally:
            self._forget(key, waiter)

    def _forget(self, key: str, waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is None or waiter not in waiters:
                return
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]

    def ended(self, key: str) -> None:
        """Task ``key`` has a final status: wake whoever waits for it."""
        with self._lock:
            waiters = self._waiters.pop(key, [])
        for waiter in waiters:
            _wake(waiter)

    def close(self) -> None:
        """The node stops: wake every waiter and let none wait from now on."""
        with self._lock:
            self._closed = True
            waiters = [w for group in self._waiters.values() for w in group]
            self._waiters.clear()
        for waiter in waiters:
            _wake(waiter)
