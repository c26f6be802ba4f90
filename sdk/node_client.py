"""Clients of a node's HTTP API (mutual TLS), sync and async.

:class:`NodeClient` (``httpx.Client``) and :class:`AsyncNodeClient`
(``httpx.AsyncClient``) offer one method per endpoint of the node API. Both
present the organization's certificate; a user token, when given, makes the
caller ``org/user``. A problem answered by the node raises
:class:`~airfed.sdk.errors.NodeRequestError` with its HTTP status and detail;
a node that cannot be reached (refused connection, failed TLS handshake)
raises it with status 0.

Uploads stream from disk and downloads stream to disk: a model is written to
a temporary file next to its destination, its SHA-256 checked against the
node's ``X-Airfed-Checksum`` header, then renamed into place. The sync
client's download reads the body without httpx (:mod:`airfed.sdk._download`).

``get_task(key, wait=S)`` long-polls: the node answers as soon as the task
ends, or with the task as it is after at most ``S`` seconds (at most
:data:`TASK_WAIT_LIMIT_SECONDS`), so a caller learns of the end at once
without asking again and again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from airfed.sdk._download import CHECKSUM_HEADER, fetch_model
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.spec import TaskSpec

__all__ = [
    "CHECKSUM_HEADER",
    "TASK_WAIT_LIMIT_SECONDS",
    "AsyncNodeClient",
    "NodeClient",
]

_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
TASK_WAIT_LIMIT_SECONDS = 30.0
"""The longest wait ``GET /tasks/{key}?wait=`` accepts."""


@dataclass
class _Call:
    """One request, described independently of the client that sends it."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, IO[bytes], str]] | None = None
    # Seconds the node may hold the answer back, on top of the read timeout.
    holds_for: float = 0.0

    def kwargs(self, timeout: httpx.Timeout) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params}
        if self.holds_for > 0:
            read = (timeout.read or _TIMEOUT.read or 60.0) + self.holds_for
            out["timeout"] = httpx.Timeout(
                connect=timeout.connect,
                read=read,
                write=timeout.write,
                pool=timeout.pool,
            )
        if self.json_body is not None:
            out["json"] = self.json_body
        if self.data is not None:
            out["data"] = self.data
        if self.files is not None:
            out["files"] = self.files
        return out


def _params(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text[:500]


def _task_call(key: str, wait: float) -> _Call:
    if wait <= 0:
        return _Call("GET", f"/tasks/{key}")
    wait = min(float(wait), TASK_WAIT_LIMIT_SECONDS)
    return _Call("GET", f"/tasks/{key}", {"wait": f"{wait:.3f}"}, holds_for=wait)


def _read_timeout(timeout: httpx.Timeout | float) -> float:
    if isinstance(timeout, httpx.Timeout):
        return float(timeout.read or _TIMEOUT.read or 60.0)
    return float(timeout)


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise NodeRequestError(response.status_code, _problem_detail(response))


def _transport_error(base_url: str, exc: httpx.HTTPError) -> NodeRequestError:
    return NodeRequestError(0, f"cannot reach the node at {base_url}: {exc}")


def _task_body(
    task: TaskSpec | Mapping[str, Any], plan: Mapping[str, Any] | None
) -> dict[str, Any]:
    body = task.model_dump(mode="json") if isinstance(task, TaskSpec) else dict(task)
    if plan is not None:
        body["plan"] = dict(plan)
    return body


class _DownloadTarget:
    """A temporary file next to ``dest`` that becomes ``dest`` once verified.

    Hashing and writing run in a thread of their own, so they overlap with
    reading the next bytes from the socket.
    """

    _QUEUE_ITEMS = 64

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.dest.name}.", dir=self.dest.parent)
        self.tmp = Path(name)
        self._handle = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self._QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._digest.update(chunk)
                self._handle.write(chunk)
            except BaseException as exc:  # reported by commit()
                self._error = exc

    def write(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def _finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._handle.close()

    def commit(self, key: str, expected: str | None) -> str:
        self._finish()
        if self._error is not None:
            self.discard()
            raise NodeRequestError(
                0, f"cannot write model {key} to {self.dest}: {self._error}"
            ) from self._error
        checksum = self._digest.hexdigest()
        if expected is not None and expected != checksum:
            self.discard()
            raise NodeRequestError(
                502, f"model {key} arrived corrupted (checksum mismatch); retry"
            )
        self.tmp.replace(self.dest)
        return checksum

    def discard(self) -> None:
        self._finish()
        self.tmp.unlink(missing_ok=True)


class _Endpoints:
    """Descriptions of the node API's calls, shared by both clients."""

    @staticmethod
    def dataset(metadata: Mapping[str, Any], opener: IO[bytes]) -> _Call:
        return _Call(
            "POST",
            "/datasets",
            data={"metadata": json.dumps(dict(metadata))},
            files={"opener": ("opener.py", opener, "text/x-python")},
        )

    @staticmethod
    def function(metadata: Mapping[str, Any], archive: IO[bytes]) -> _Call:
        return _Call(
            "POST",
            "/functions",
            data={"metadata": json.dumps(dict(metadata))},
            files={"archive": ("function.tar.gz", archive, "application/gzip")},
        )

    @staticmethod
    def sample_archive(dataset_key: str, archive: IO[bytes]) -> _Call:
        return _Call(
            "POST",
            f"/datasets/{dataset_key}/samples",
            files={"archive": ("sample.tar.gz", archive, "application/gzip")},
        )


@contextlib.contextmanager
def _packed(folder: Path) -> Iterator[Path]:
    from airfed.node_api._archive import pack_folder

    with tempfile.TemporaryDirectory(prefix="airfed-pack-") as tmp:
        yield pack_folder(Path(folder), Path(tmp) / "folder.tar.gz")


class NodeClient:
    """Synchronous client of one node."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = _TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl_context = ssl_context
        self._headers = headers
        self._read_timeout = _read_timeout(timeout)
        self._http = httpx.Client(
            base_url=self.base_url, verify=ssl_context, headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport

    def _send(self, call: _Call) -> httpx.Response:
        try:
            response = self._http.request(
                call.method, call.path, **call.kwargs(self._http.timeout)
            )
        except httpx.HTTPError as exc:
            raise _transport_error(self.base_url, exc) from exc
        _raise_for_problem(response)
        return response

    def _json(self, call: _Call) -> Any:
        return self._send(call).json()

    # -- network

    def health(self) -> dict[str, Any]:
        return dict(self._json(_Call("GET", "/health")))

    def organizations(self) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", "/organizations")))

    # -- datasets and data samples

    def create_dataset(
        self, metadata: Mapping[str, Any], opener: Path
    ) -> dict[str, Any]:
        with Path(opener).open("rb") as handle:
            return dict(self._json(_Endpoints.dataset(metadata, handle)))

    def list_datasets(self, q: str | None = None) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", "/datasets", _params(q=q))))

    def get_dataset(self, key: str) -> dict[str, Any]:
        return dict(self._json(_Call("GET", f"/datasets/{key}")))

    def add_sample_archive(self, dataset_key: str, archive: Path) -> dict[str, Any]:
        with Path(archive).open("rb") as handle:
            return dict(self._json(_Endpoints.sample_archive(dataset_key, handle)))

    def add_sample_folder(self, dataset_key: str, folder: Path) -> dict[str, Any]:
        """Pack a local folder as tar.gz and upload it as one data sample."""
        with _packed(folder) as archive:
            return self.add_sample_archive(dataset_key, archive)

    def add_sample_path(self, dataset_key: str, path: str) -> dict[str, Any]:
        """Register a folder already on the node's disk as a data sample."""
        call = _Call(
            "POST", f"/datasets/{dataset_key}/samples", json_body={"path": path}
        )
        return dict(self._json(call))

    def list_samples(self, dataset: str | None = None) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", "/samples", _params(dataset=dataset))))

    # -- functions

    def create_function(
        self, metadata: Mapping[str, Any], archive: Path
    ) -> dict[str, Any]:
        with Path(archive).open("rb") as handle:
            return dict(self._json(_Endpoints.function(metadata, handle)))

    def create_function_from_folder(
        self, metadata: Mapping[str, Any], folder: Path
    ) -> dict[str, Any]:
        with _packed(folder) as archive:
            return self.create_function(metadata, archive)

    def list_functions(self, q: str | None = None) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", "/functions", _params(q=q))))

    def get_function(self, key: str) -> dict[str, Any]:
        return dict(self._json(_Call("GET", f"/functions/{key}")))

    # -- models and performances

    def list_models(
        self, plan_key: str | None = None, task_key: str | None = None
    ) -> list[dict[str, Any]]:
        params = _params(plan_key=plan_key, task_key=task_key)
        return list(self._json(_Call("GET", "/models", params)))

    def get_model_metadata(self, key: str) -> dict[str, Any]:
        return dict(self._json(_Call("GET", f"/models/{key}/metadata")))

    def download_model(self, key: str, dest: Path) -> str:
        """Stream model ``key`` into ``dest``; return its verified SHA-256.

        The body bypasses httpx (see :mod:`airfed.sdk._download`): the same
        certificate and token, one request read into reusable buffers.
        """
        return fetch_model(
            self.base_url,
            self._ssl_context,
            self._headers,
            key,
            Path(dest),
            timeout=self._read_timeout,
        )

    def model_accesses(self, key: str) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", f"/models/{key}/accesses")))

    def list_performances(self, plan_key: str | None = None) -> list[dict[str, Any]]:
        params = _params(plan_key=plan_key)
        return list(self._json(_Call("GET", "/performances", params)))

    # -- tasks

    def submit_task(
        self,
        task: TaskSpec | Mapping[str, Any],
        plan: Mapping[str, Any] | None = None,
        *,
        runner: str | None = None,
    ) -> dict[str, Any]:
        """Post a task; re-posting the same key returns the existing task.

        ``runner="pod"`` asks the node to prepare the task for a pod (status
        ``prepared``) instead of running it; :meth:`collect_task` ends it.
        """
        body = _task_body(task, plan)
        if runner is not None:
            body["runner"] = runner
        return dict(self._json(_Call("POST", "/tasks", json_body=body)))

    def collect_task(self, key: str) -> dict[str, Any]:
        """End a task prepared for a pod from what the pod wrote; retry-safe."""
        return dict(self._json(_Call("POST", f"/tasks/{key}/collect")))

    def get_task(self, key: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Task ``key``; with ``wait`` (seconds), once it ends or the wait is up.

        The node answers as soon as the task is done, failed or canceled;
        otherwise after ``wait`` seconds (capped at
        :data:`TASK_WAIT_LIMIT_SECONDS`) or earlier if it stops, with the
        task as it is then.
        """
        return dict(self._json(_task_call(key, wait)))

    def list_tasks(self, plan_key: str | None = None) -> list[dict[str, Any]]:
        return list(self._json(_Call("GET", "/tasks", _params(plan_key=plan_key))))

    def cancel_task(self, key: str) -> dict[str, Any]:
        return dict(self._json(_Call("POST", f"/tasks/{key}/cancel")))

    def task_logs(self, key: str) -> str:
        return self._send(_Call("GET", f"/tasks/{key}/logs")).text

    def release_task_outputs(self, task_key: str, consumer: str) -> dict[str, Any]:
        """Tell the node of ``task_key`` that task ``consumer`` has finished."""
        call = _Call(
            "POST", f"/tasks/{task_key}/release", json_body={"consumer": consumer}
        )
        return dict(self._json(call))

    def end_plan(self, plan_key: str) -> dict[str, Any]:
        """The plan ended or was canceled: the node deletes its transient models."""
        return dict(self._json(_Call("POST", f"/plans/{plan_key}/end")))


class AsyncNodeClient:
    """Asynchronous client of one node (for Airflow's triggerer and nodes)."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = _TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, verify=ssl_context, headers=headers, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNodeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        try:
            response = await self._http.request(
                call.method, call.path, **call.kwargs(self._http.timeout)
            )
        except httpx.HTTPError as exc:
            raise _transport_error(self.base_url, exc) from exc
        _raise_for_problem(response)
        return response

    async def _json(self, call: _Call) -> Any:
        return (await self._send(call)).json()

    async def health(self) -> dict[str, Any]:
        return dict(await self._json(_Call("GET", "/health")))

    async def organizations(self) -> list[dict[str, Any]]:
        return list(await self._json(_Call("GET", "/organizations")))

    async def create_dataset(
        self, metadata: Mapping[str, Any], opener: Path
    ) -> dict[str, Any]:
        with Path(opener).open("rb") as handle:
            return dict(await self._json(_Endpoints.dataset(metadata, handle)))

    async def list_datasets(self, q: str | None = None) -> list[dict[str, Any]]:
        return list(await self._json(_Call("GET", "/datasets", _params(q=q))))

    async def get_dataset(self, key: str) -> dict[str, Any]:
        return dict(await self._json(_Call("GET", f"/datasets/{key}")))

    async def add_sample_archive(
        self, dataset_key: str, archive: Path
    ) -> dict[str, Any]:
        with Path(archive).open("rb") as handle:
            call = _Endpoints.sample_archive(dataset_key, handle)
            return dict(await self._json(call))

    async def add_sample_path(self, dataset_key: str, path: str) -> dict[str, Any]:
        call = _Call(
            "POST", f"/datasets/{dataset_key}/samples", json_body={"path": path}
        )
        return dict(await self._json(call))

    async def list_samples(self, dataset: str | None = None) -> list[dict[str, Any]]:
        call = _Call("GET", "/samples", _params(dataset=dataset))
        return list(await self._json(call))

    async def create_function(
        self, metadata: Mapping[str, Any], archive: Path
    ) -> dict[str, Any]:
        with Path(archive).open("rb") as handle:
            return dict(await self._json(_Endpoints.function(metadata, handle)))

    async def list_functions(self, q: str | None = None) -> list[dict[str, Any]]:
        return list(await self._json(_Call("GET", "/functions", _params(q=q))))

    async def get_function(self, key: str) -> dict[str, Any]:
        return dict(await self._json(_Call("GET", f"/functions/{key}")))

    async def list_models(
        self, plan_key: str | None = None, task_key: str | None = None
    ) -> list[dict[str, Any]]:
        params = _params(plan_key=plan_key, task_key=task_key)
        return list(await self._json(_Call("GET", "/models", params)))

    async def get_model_metadata(self, key: str) -> dict[str, Any]:
        return dict(await self._json(_Call("GET", f"/models/{key}/metadata")))

    async def download_model(self, key: str, dest: Path) -> str:
        """Stream model ``key`` into ``dest``; return its verified SHA-256."""
        target = _DownloadTarget(dest)
        try:
            async with self._http.stream("GET", f"/models/{key}") as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_problem(response)
                async for chunk in response.aiter_raw():
                    target.write(chunk)
                expected = response.headers.get(CHECKSUM_HEADER)
        except httpx.HTTPError as exc:
            target.discard()
            raise _transport_error(self.base_url, exc) from exc
        except BaseException:
            target.discard()
            raise
        return target.commit(key, expected)

    async def model_accesses(self, key: str) -> list[dict[str, Any]]:
        return list(await self._json(_Call("GET", f"/models/{key}/accesses")))

    async def list_performances(
        self, plan_key: str | None = None
    ) -> list[dict[str, Any]]:
        call = _Call("GET", "/performances", _params(plan_key=plan_key))
        return list(await self._json(call))

    async def submit_task(
        self,
        task: TaskSpec | Mapping[str, Any],
        plan: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        call = _Call("POST", "/tasks", json_body=_task_body(task, plan))
        return dict(await self._json(call))

    async def get_task(self, key: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Task ``key``; with ``wait``, as :meth:`NodeClient.get_task`."""
        return dict(await self._json(_task_call(key, wait)))

    async def list_tasks(self, plan_key: str | None = None) -> list[dict[str, Any]]:
        call = _Call("GET", "/tasks", _params(plan_key=plan_key))
        return list(await self._json(call))

    async def cancel_task(self, key: str) -> dict[str, Any]:
        return dict(await self._json(_Call("POST", f"/tasks/{key}/cancel")))

    async def task_logs(self, key: str) -> str:
        return (await self._send(_Call("GET", f"/tasks/{key}/logs"))).text

    async def release_task_outputs(
        self, task_key: str, consumer: str
    ) -> dict[str, Any]:
        call = _Call(
            "POST", f"/tasks/{task_key}/release", json_body={"consumer": consumer}
        )
        return dict(await self._json(call))

    async def end_plan(self, plan_key: str) -> dict[str, Any]:
        """The plan ended or was canceled: the node deletes its transient models."""
        return dict(await self._json(_Call("POST", f"/plans/{plan_key}/end")))
