"""The orchestrator's ledger relay, against a real log on loopback.

Task processes hand their ``task_status`` statements to the relay over a
Unix socket; the relay signs them as the orchestrator and appends them over
its one gRPC channel. A sender that finds no relay writes to the log itself.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airfed.ledger._network import key_ring
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, parse_entry, verify_entry
from airfed.ledger.server import LedgerServer, serve_log
from airfed.sdk._ledger import EntrySender
from airfed.sdk._ledger_relay import (
    LedgerRelay,
    RelayClient,
    RelayError,
    RelayUnavailable,
)
from airfed.sdk.network import Network
from tests.support.ledger import wait_for


@pytest.fixture
def log(network: Network) -> Iterator[LedgerServer]:
    server = serve_log(network.root, batch_interval=0.05)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(network: Network, log: LedgerServer, tmp_path: Path) -> Iterator[LedgerRelay]:
    with LedgerRelay.in_folder(
        network.root / "orchestrator", tmp_path / "home"
    ) as running:
        yield running


def _status(plan_key: str = "plan-1", status: str = "done") -> dict[str, Any]:
    return {"plan_key": plan_key, "status": status, "worker": "b", "round": 2}


def _logged(network: Network, key: str) -> list[Entry]:
    with LedgerClient(network.ledger_address, network.root / "a") as client:
        found = [parse_entry(data) for _, data in client.find(key)]
    keys = key_ring(network)
    for entry in found:
        verify_entry(entry, keys)
    return found


def _ask(path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(path))
        raw.sendall(line)
        answer: dict[str, Any] = json.loads(raw.makefile("rb").readline())
        return answer


def test_statements_through_the_relay_are_signed_by_the_orchestrator(
    network: Network, relay: LedgerRelay
) -> None:
    key = f"task-{uuid.uuid4().hex[:8]}"
    sender = EntrySender(
        network.root / "orchestrator", relay=relay.socket_path, flush_at_exit=False
    )
    sender.record("task_status", key, _status(status="executing"))
    sender.record("task_status", key, lambda: _status(status="done"))
    assert sender.flush(30)
    sender.close()

    entries = wait_for(
        "both entries on the log",
        lambda: found if len(found := _logged(network, key)) == 2 else None,
    )
    assert [e.author for e in entries] == ["orchestrator", "orchestrator"]
    assert [e.body["status"] for e in entries] == ["executing", "done"]
    assert entries[1].body == _status(status="done")
    assert relay.sent == 2


def test_a_task_process_with_the_relay_never_loads_grpc(
    network: Network, relay: LedgerRelay
) -> None:
    key = f"task-{uuid.uuid4().hex[:8]}"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from airfed.sdk._ledger import EntrySender\n"
        f"sender = EntrySender(Path({str(network.root / 'orchestrator')!r}),"
        f" relay=Path({str(relay.socket_path)!r}))\n"
        f"sender.record('task_status', {key!r}, {_status()!r})\n"
        "assert sender.flush(30)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('grpc', 'cryptography', 'google')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    entries = wait_for("the entry on the log", lambda: _logged(network, key) or None)
    assert entries[0].author == "orchestrator"


def test_a_sender_without_a_relay_writes_to_the_log_itself(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    key = f"task-{uuid.uuid4().hex[:8]}"
    sender = EntrySender(
        network.root / "orchestrator",
        relay=tmp_path / "nobody-listens.sock",
        flush_at_exit=False,
    )
    sender.record("task_status", key, _status())
    assert sender.flush(30)
    sender.close()

    entries = wait_for("the entry on the log", lambda: _logged(network, key) or None)
    assert entries[0].author == "orchestrator"
    assert sender.sent == 1


def test_a_sender_whose_relay_stops_goes_on_over_its_own_channel(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    first, second = (f"task-{uuid.uuid4().hex[:8]}" for _ in range(2))
    relay = LedgerRelay.in_folder(network.root / "orchestrator", tmp_path / "home")
    sender = EntrySender(
        network.root / "orchestrator", relay=relay.socket_path, flush_at_exit=False
    )
    sender.record("task_status", first, _status())
    assert sender.flush(30)
    relay.stop()

    sender.record("task_status", second, _status())
    assert sender.flush(30)
    sender.close()

    for key in (first, second):
        entries = wait_for(f"entry {key} on the log", lambda k=key: _logged(network, k))
        assert entries[0].author == "orchestrator"


def test_the_relay_refuses_what_the_orchestrator_does_not_write(
    network: Network, relay: LedgerRelay
) -> None:
    good, other, bad = (f"task-{uuid.uuid4().hex[:8]}" for _ in range(3))
    client = RelayClient(relay.socket_path)
    try:
        refused = client.send(
            [
                {"kind": "plan_registered", "key": other, "body": {"spec_hash": "0"}},
                {"kind": "task_status", "key": bad, "body": _status(status="won")},
                {"kind": "task_status", "key": good, "body": _status()},
                {"kind": "task_status", "key": "", "body": _status()},
            ]
        )
    finally:
        client.close()

    assert [r["index"] for r in refused] == [0, 1, 3]
    assert "plan_registered" in refused[0]["error"]
    assert "won" in refused[1]["error"]
    assert "key" in refused[2]["error"]
    wait_for("the accepted entry on the log", lambda: _logged(network, good) or None)
    assert _logged(network, other) == []
    assert _logged(network, bad) == []


def test_a_request_the_relay_cannot_read_is_answered_and_harms_nothing(
    network: Network, relay: LedgerRelay
) -> None:
    assert "not JSON" in _ask(relay.socket_path, b"{half\n")["error"]
    assert "statements" in _ask(relay.socket_path, b'{"entries": []}\n')["error"]
    assert "statements" in _ask(relay.socket_path, b"[1, 2]\n")["error"]

    key = f"task-{uuid.uuid4().hex[:8]}"
    request = {"statements": [{"kind": "task_status", "key": key, "body": _status()}]}
    answer = _ask(relay.socket_path, json.dumps(request).encode() + b"\n")
    assert answer == {"accepted": 1, "refused": []}
    wait_for("the entry on the log", lambda: _logged(network, key) or None)


def test_only_the_relays_user_can_open_its_socket(relay: LedgerRelay) -> None:
    folder = relay.socket_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(relay.socket_path.stat().st_mode)


def test_a_home_too_deep_for_a_socket_gets_a_private_folder_removed_at_stop(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    relay = LedgerRelay.in_folder(network.root / "orchestrator", deep)
    folder = relay.socket_path.parent
    assert len(str(relay.socket_path)) <= 107
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    relay.stop()

    assert not folder.exists()
    with pytest.raises(RelayUnavailable, match="no ledger relay"):
        RelayClient(relay.socket_path)


def test_stopping_the_relay_sends_what_it_still_holds(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    keys = [f"task-{uuid.uuid4().hex[:8]}" for _ in range(300)]
    relay = LedgerRelay.in_folder(network.root / "orchestrator", tmp_path / "home")
    client = RelayClient(relay.socket_path)
    statements = [{"kind": "task_status", "key": k, "body": _status()} for k in keys]
    assert client.send(statements) == []
    client.close()
    relay.stop()

    assert relay.sent == len(keys)
    wait_for("the last entry on the log", lambda: _logged(network, keys[-1]))


def test_a_socket_at_a_given_path_is_private_and_not_taken_twice(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    path = tmp_path / "relay.sock"
    with LedgerRelay(network.root / "orchestrator", path) as first:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(RelayError, match="already listens"):
            LedgerRelay(network.root / "orchestrator", path)
        with RelayClient(first.socket_path) as client:
            assert client.send([]) == []
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]


def test_a_stale_socket_is_replaced(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    path = tmp_path / "relay.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed relay leaves
    with LedgerRelay(network.root / "orchestrator", path) as relay:
        key = f"task-{uuid.uuid4().hex[:8]}"
        with RelayClient(relay.socket_path) as client:
            statement = {"kind": "task_status", "key": key, "body": _status()}
            assert client.send([statement]) == []
    wait_for("the entry on the log", lambda: _logged(network, key))


def _airfed(*args: str, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "airfed"), "ledger", "relay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_the_relay_command_serves_until_sigterm_and_sends_what_it_holds(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    path = tmp_path / "relay.sock"
    command = _airfed("--network", str(network.root), "--socket", str(path))
    try:
        wait_for("the relay's socket", lambda: path.exists() or None)
        keys = [f"task-{uuid.uuid4().hex[:8]}" for _ in range(50)]
        client = RelayClient(path)
        statements = [
            {"kind": "task_status", "key": k, "body": _status()} for k in keys
        ]
        assert client.send(statements) == []
        client.close()
    finally:
        command.terminate()
        _, stderr = command.communicate(timeout=60)

    assert command.returncode == 0, stderr
    assert f"ledger relay listening on {path}" in " ".join(stderr.split())
    assert not path.exists()
    for key in keys:
        wait_for(f"entry {key} on the log", lambda k=key: _logged(network, k))


def test_the_relay_command_says_what_is_wrong_in_one_line(
    network: Network, tmp_path: Path
) -> None:
    missing = _airfed("--network", str(tmp_path), "--socket", str(tmp_path / "s"))
    _, stderr = missing.communicate(timeout=60)
    assert missing.returncode == 1
    assert "identity.key does not exist" in " ".join(stderr.split())
    assert "Traceback" not in stderr

    nowhere = tmp_path / "no-such-folder" / "relay.sock"
    bad = _airfed("--network", str(network.root), "--socket", str(nowhere))
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 1
    assert "is not a folder; create it first" in " ".join(stderr.split())
    assert "Traceback" not in stderr
