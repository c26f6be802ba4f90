"""The background recorder: entries reach the log without blocking the caller."""

from __future__ import annotations

import time

from airfed.ledger.client import LedgerClient
from airfed.ledger.recorder import LedgerRecorder
from airfed.ledger.server import LedgerServer, serve_log
from airfed.sdk.network import Network
from tests.ledger.conftest import Authors


def test_recorded_entries_reach_the_log_even_if_it_starts_later(
    network: Network, authors: Authors
) -> None:
    client = LedgerClient(network.ledger_address, network.root / "a", timeout=5)
    recorder = LedgerRecorder(client, flush_interval=0.05)
    entries = authors.many(30)
    for entry in entries[:10]:
        recorder.record(entry)
    assert not recorder.flush(timeout=1.0)  # no log yet: kept for a retry
    assert recorder.pending == 10

    server = serve_log(network.root, batch_interval=0.05)
    try:
        for entry in entries[10:]:
            recorder.record(entry)
        assert recorder.close(timeout=60)
        assert recorder.pending == 0
        assert _integrated(server, 30) == 30
        with LedgerClient(network.ledger_address, network.root / "b") as reader:
            stored = reader.entries(0, 100)
        assert sorted(data for _, data in stored) == sorted(e.data for e in entries)
    finally:
        client.close()
        server.stop()


def test_an_entry_the_log_refuses_is_dropped(
    network: Network, authors: Authors
) -> None:
    server = serve_log(network.root, batch_interval=0.05)
    try:
        with LedgerClient(network.ledger_address, network.root / "a") as client:
            recorder = LedgerRecorder(client, flush_interval=0.05)
            recorder.record(authors.plan(org="b"))  # not a's own entry
            recorder.record(authors.plan(org="a"))
            assert recorder.close(timeout=30)
        assert _integrated(server, 1) == 1
        assert server.servicer.store.entries(0, 1)[0].author == "a"
    finally:
        server.stop()


def _integrated(server: LedgerServer, count: int) -> int:
    """The log's size once it holds ``count`` entries (or after 30 s)."""
    writer = server.servicer.writer
    assert writer is not None
    deadline = time.monotonic() + 30
    while writer.size < count and time.monotonic() < deadline:
        writer.wait_for_size(count - 1, timeout=1.0)
    return writer.size
