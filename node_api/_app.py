"""The node's HTTP API (contract C): FastAPI app factory and routes.

Every answer that is not a success is ``application/problem+json``
(``type``, ``title``, ``status``, ``detail``): node errors carry their own
status and message, request validation errors name the field, and anything
unexpected becomes a 500 that says only that the node failed (the trace goes
to the node's log, never to the caller).

No route returns the content of a data sample; a test walks the OpenAPI
schema to prove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pydantic
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airfed.node_api._archive import ArchiveError
from airfed.node_api._auth import Caller, identify
from airfed.node_api._context import NodeContext
from airfed.node_api._external import POD, ExternalTasks, split_runner
from airfed.node_api._ledger import node_ledger
from airfed.node_api._store import AssetStore
from airfed.node_api._tasks import TaskService
from airfed.node_api._upload import receive_multipart
from airfed.node_api.errors import BadRequest, NodeError
from airfed.sdk.node_client import TASK_WAIT_LIMIT_SECONDS

__all__ = ["CHECKSUM_HEADER", "create_app"]

logger = logging.getLogger(__name__)

CHECKSUM_HEADER = "X-Airfed-Checksum"
_PROBLEM = "application/problem+json"
_SEND_SLICE = 64 * 1024


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=_PROBLEM,
    )


def _validation_detail(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is invalid"
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"field {location}: {first.get('msg', 'is invalid')}"


def _install_error_handlers(app: FastAPI) -> None:
    async def node_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NodeError)
        return _problem(exc.status, exc.title, str(exc))

    async def archive_error(_: Request, exc: Exception) -> JSONResponse:
        return _problem(400, "Bad request", str(exc))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _problem(400, "Bad request", _validation_detail(exc))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _problem(exc.status_code, "HTTP error", str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "request failed path=%s", request.url.path, exc_info=(type(exc), exc, None)
        )
        return _problem(500, "Internal error", "the node failed; see its log")

    app.add_exception_handler(NodeError, node_error)
    app.add_exception_handler(ArchiveError, archive_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _multipart_doc(fields: dict[str, str]) -> dict[str, Any]:
    properties = {
        name: {"type": "string", "format": kind} if kind else {"type": "string"}
        for name, kind in fields.items()
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties}
                }
            },
        }
    }


def _caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    context: NodeContext = request.app.state.context
    return identify(
        request.scope,
        authorization,
        db=context.db,
        node_organization=context.organization,
        members=context.members,
    )


Who = Annotated[Caller, Depends(_caller)]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=TASK_WAIT_LIMIT_SECONDS,
        description=(
            "Seconds to wait for the task to end (done, failed or canceled) "
            "before answering; the answer comes as soon as it ends, or with "
            "the task as it is when the wait runs out or the node stops. "
            "0, the default, answers at once."
        ),
    ),
]


class SamplePath(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    path: str


class Release(pydantic.BaseModel):
    """``POST /tasks/{key}/release``: a consuming task has finished."""

    model_config = pydantic.ConfigDict(extra="forbid")
    consumer: str = pydantic.Field(min_length=1, max_length=64)


def create_app(context: NodeContext, *, run_tasks: bool = True) -> FastAPI:
    """The node's app; with ``run_tasks`` its task worker runs alongside."""
    store = AssetStore(context)
    tasks = TaskService(context, store)
    external = ExternalTasks(tasks)
    ledger = node_ledger(context)
    if ledger is not None:
        tasks.before_run = ledger.check_task

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if ledger is not None:
            ledger.start()
        if run_tasks:
            tasks.start()
            external.start()
        try:
            yield
        finally:
            external.stop()
            tasks.stop()
            if ledger is not None:
                ledger.stop()
            context.db.dispose()

    app = FastAPI(
        title=f"airfed node {context.organization}",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    app.state.tasks = tasks
    app.state.ledger = ledger
    _install_error_handlers(app)

    max_bytes = int(context.config.max_upload_bytes)

    _network_routes(app, context)
    _dataset_routes(app, context, store, max_bytes)
    _function_routes(app, context, store, max_bytes)
    _model_routes(app, store)
    _task_routes(app, tasks, external)
    return app


def _network_routes(app: FastAPI, context: NodeContext) -> None:
    @app.get("/health")
    def health(who: Who) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok",
            "organization": context.organization,
            "caller": who.id,
            "database": context.db.engine.dialect.name,
        }
        if app.state.ledger is not None:
            body["ledger"] = app.state.ledger.health()
            if body["ledger"]["status"] == "alarm":
                body["status"] = "alarm"
        return body

    @app.get("/organizations")
    def organizations(who: Who) -> list[dict[str, Any]]:
        return [
            {
                "id": org.id,
                "role": org.role,
                "node_url": org.node_url,
                "identity_public_key": org.identity_public_key,
            }
            for org in context.config.network.organizations
        ]


def _dataset_routes(
    app: FastAPI, context: NodeContext, store: AssetStore, max_bytes: int
) -> None:
    @app.post(
        "/datasets",
        status_code=201,
        openapi_extra=_multipart_doc({"metadata": "", "opener": "binary"}),
    )
    async def create_dataset(request: Request, who: Who) -> dict[str, Any]:
        store.check_dataset_creator(who)
        upload = await receive_multipart(
            request,
            context.objects,
            file_fields=frozenset({"opener"}),
            max_bytes=max_bytes,
        )
        return dict(
            await _in_thread(store.create_dataset, who, upload.fields, upload.files)
        )

    @app.get("/datasets")
    def list_datasets(who: Who, q: str | None = None) -> list[dict[str, Any]]:
        return list(store.list_datasets(q))

    @app.get("/datasets/{key}")
    def get_dataset(key: str, who: Who) -> dict[str, Any]:
        return dict(store.get_dataset(key))

    @app.post(
        "/datasets/{key}/samples",
        status_code=201,
        openapi_extra=_multipart_doc({"archive": "binary"}),
    )
    async def add_sample(key: str, request: Request, who: Who) -> dict[str, Any]:
        await _in_thread(store.check_sample_target, who, key)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                body = SamplePath.model_validate_json(await request.body())
            except pydantic.ValidationError as exc:
                raise BadRequest('the body must be {"path": "/abs/folder"}') from exc
            return dict(await _in_thread(store.add_sample_path, who, key, body.path))
        upload = await receive_multipart(
            request,
            context.objects,
            file_fields=frozenset({"archive"}),
            max_bytes=max_bytes,
        )
        return dict(await _in_thread(store.add_sample_upload, who, key, upload.files))

    @app.get("/samples")
    def list_samples(who: Who, dataset: str | None = None) -> list[dict[str, Any]]:
        return list(store.list_samples(dataset))


def _function_routes(
    app: FastAPI, context: NodeContext, store: AssetStore, max_bytes: int
) -> None:
    @app.post(
        "/functions",
        status_code=201,
        openapi_extra=_multipart_doc({"metadata": "", "archive": "binary"}),
    )
    async def create_function(request: Request, who: Who) -> dict[str, Any]:
        upload = await receive_multipart(
            request,
            context.objects,
            file_fields=frozenset({"archive"}),
            max_bytes=max_bytes,
        )
        return dict(
            await _in_thread(store.create_function, who, upload.fields, upload.files)
        )

    @app.get("/functions")
    def list_functions(who: Who, q: str | None = None) -> list[dict[str, Any]]:
        return list(store.list_functions(q))

    @app.get("/functions/{key}")
    def get_function(key: str, who: Who) -> dict[str, Any]:
        return dict(store.get_function(key))


def _model_routes(app: FastAPI, store: AssetStore) -> None:
    @app.get("/models")
    def list_models(
        who: Who, plan_key: str | None = None, task_key: str | None = None
    ) -> list[dict[str, Any]]:
        return list(store.list_models(plan_key, task_key))

    @app.get("/models/{key}/metadata")
    def model_metadata(key: str, who: Who) -> dict[str, Any]:
        return dict(store.get_model(key))

    @app.get(
        "/models/{key}",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def download_model(key: str, who: Who) -> StreamingResponse:
        model, chunks = store.open_model(who, key)
        return StreamingResponse(
            _streamed(chunks),
            media_type="application/octet-stream",
            headers={
                CHECKSUM_HEADER: model["checksum"],
                "Content-Length": str(model["size"]),
            },
        )

    @app.get("/models/{key}/accesses")
    def model_accesses(key: str, who: Who) -> list[dict[str, Any]]:
        return list(store.model_accesses(who, key))

    @app.get("/performances")
    def list_performances(
        who: Who, plan_key: str | None = None
    ) -> list[dict[str, Any]]:
        return list(store.list_performances(plan_key))


def _task_routes(app: FastAPI, tasks: TaskService, external: ExternalTasks) -> None:
    @app.post("/tasks", status_code=202)
    async def submit_task(request: Request, who: Who) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest("the task must be a JSON object (a TaskSpec)") from exc
        runner, body = split_runner(body)
        service = external if runner == POD else tasks
        task, created = await _in_thread(service.submit, who, body)
        return JSONResponse(task, status_code=202 if created else 200)

    @app.get("/tasks")
    def list_tasks(who: Who, plan_key: str | None = None) -> list[dict[str, Any]]:
        return list(tasks.list(plan_key))

    @app.get("/tasks/{key}")
    async def get_task(key: str, who: Who, wait: Wait = 0.0) -> dict[str, Any]:
        """The task; with ``wait``, once it has ended or the wait runs out."""
        if wait <= 0:
            return dict(await _in_thread(tasks.get, key))
        return dict(await tasks.wait_for_end(key, wait))

    @app.post("/tasks/{key}/cancel")
    def cancel_task(key: str, who: Who) -> dict[str, Any]:
        return dict(external.cancel(who, key) or tasks.cancel(who, key))

    @app.post("/tasks/{key}/collect")
    def collect_task(key: str, who: Who) -> dict[str, Any]:
        return dict(external.collect(who, key))

    @app.get("/tasks/{key}/logs", response_class=PlainTextResponse)
    def task_logs(key: str, who: Who) -> str:
        return str(tasks.logs(who, key))

    @app.post("/tasks/{key}/release")
    def release_outputs(key: str, body: Release, who: Who) -> dict[str, Any]:
        """Consumer ``body.consumer`` has finished with this task's outputs."""
        return dict(tasks.transient.release(who, key, body.consumer))

    @app.post("/plans/{plan_key}/end")
    def end_plan(plan_key: str, who: Who) -> dict[str, Any]:
        """The plan ended or was canceled: delete its transient models here."""
        return dict(tasks.transient.end_plan(who, plan_key))


async def _streamed(chunks: Iterator[bytes]) -> AsyncIterator[memoryview]:
    """Send decrypted chunks in slices while the next chunk is decrypted.

    Decryption runs in a worker thread one chunk ahead of the socket; the
    slices keep each write to the TLS transport small.
    """
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, next, chunks, None)
    try:
        while (chunk := await pending) is not None:
            pending = loop.run_in_executor(None, next, chunks, None)
            view = memoryview(chunk)
            for start in range(0, len(view), _SEND_SLICE):
                yield view[start : start + _SEND_SLICE]
    finally:
        with contextlib.suppress(Exception):
            await pending
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def _in_thread(func: Any, *args: Any) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(func, *args)
