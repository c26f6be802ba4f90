"""Starting Airflow: what the orchestrator checks before it says it is ready."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from airfed.sdk._airflow import _warm_execution_api
from airfed.sdk.errors import OrchestratorError
from tests.support.ports import free_port


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    requested: list[str] = []

    def do_GET(self) -> None:
        type(self).requested.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "healthy"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Health.requested = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_execution_api_is_built_before_the_first_task_calls_it(
    api_server: str,
) -> None:
    _warm_execution_api(api_server, timeout=5)

    assert _Health.requested == ["/execution/health"]


def test_an_execution_api_that_fails_stops_the_start(
    api_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Health, "status", 503)

    with pytest.raises(OrchestratorError, match="answered 503"):
        _warm_execution_api(api_server, timeout=5)


def test_an_execution_api_that_does_not_answer_stops_the_start() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(OrchestratorError, match="does not answer"):
        _warm_execution_api(url, timeout=2)
