"""The node's database: SQLAlchemy 2 models and the session factory.

SQLite by default, PostgreSQL by URL; the schema is created and upgraded by
the alembic migrations in ``airfed.node_api.migrations`` (``migrate``), which
``airfed node start`` runs before serving. Timestamps are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from airfed.node_api.errors import Conflict, DatabaseUnavailable

__all__ = [
    "ApiToken",
    "Base",
    "DataSample",
    "Database",
    "Dataset",
    "Function",
    "LedgerOutbox",
    "Model",
    "ModelAccess",
    "OutputRelease",
    "Performance",
    "Task",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that reads back as aware UTC on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(
        self, value: dt.datetime | None, dialect: Any
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        dt.datetime: UTCDateTime(),
    }


class ApiToken(Base):
    """A user's API token, stored as its SHA-256 (the token is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column("user_name", String(200), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Set by ``airfed node token revoke``; the row stays for the record.
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200))
    permissions: Mapped[dict[str, Any]]
    logs_permission: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    opener_object: Mapped[str] = mapped_column(String(64))
    opener_checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DataSample(Base):
    __tablename__ = "data_samples"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_key: Mapped[str] = mapped_column(ForeignKey("datasets.key"), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    object_id: Mapped[str] = mapped_column(String(64))
    checksum: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(20))  # "upload" or "path"
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Function(Base):
    __tablename__ = "functions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200))
    entrypoint: Mapped[str] = mapped_column(String(300))
    inputs: Mapped[list[Any]]
    outputs: Mapped[list[Any]]
    permissions: Mapped[dict[str, Any]]
    object_id: Mapped[str] = mapped_column(String(64))
    checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    plan_key: Mapped[str] = mapped_column(String(64), index=True)
    task_key: Mapped[str] = mapped_column(String(64), index=True)
    identifier: Mapped[str] = mapped_column(String(200))
    permissions: Mapped[dict[str, Any]]
    transient: Mapped[bool] = mapped_column(default=False)
    object_id: Mapped[str] = mapped_column(String(64))
    checksum: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Tasks that take a transient model as input (from its task's spec).
    consumers: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Set when a transient model's file is deleted; metadata and checksum stay.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OutputRelease(Base):
    """A consuming task that finished with the outputs of a task of this node.

    Keyed by the producing task, not the model: a consumer that is canceled
    before its parent finishes releases outputs that do not exist yet.
    """

    __tablename__ = "output_releases"

    task_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    consumer_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelAccess(Base):
    """Who read a model's content, when, and why."""

    __tablename__ = "model_accesses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_key: Mapped[str] = mapped_column(ForeignKey("models.key"), index=True)
    organization: Mapped[str] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column("user_name", String(200))
    purpose: Mapped[str] = mapped_column(String(20))  # "download" or "process"
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Performance(Base):
    __tablename__ = "performances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_key: Mapped[str] = mapped_column(String(64), index=True)
    plan_key: Mapped[str] = mapped_column(String(64), index=True)
    round: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    identifier: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Task(Base):
    __tablename__ = "tasks"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_key: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]]
    plan: Mapped[dict[str, Any]]
    submitter: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), index=True)
    outputs: Mapped[dict[str, Any]]
    performances: Mapped[dict[str, Any]]
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    # Plaintext logs of databases from before sealed_logs; sealed at start.
    logs: Mapped[str | None] = mapped_column(Text)
    # The task's log, encrypted under the master key (ObjectStore.seal).
    sealed_logs: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    dataset_key: Mapped[str | None] = mapped_column(String(64))
    function_owner: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LedgerOutbox(Base):
    """A signed ledger entry that the log has not yet accepted.

    It is written in the same transaction as the change it records, sent
    from here, and deleted once the log holds it; ``problem`` is set (and
    the row kept, not resent) when the log refuses it.
    """

    __tablename__ = "ledger_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    subject_key: Mapped[str] = mapped_column(String(256))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def _first_line(exc: SQLAlchemyError) -> str:
    origin = getattr(exc, "orig", None) or exc
    return str(origin).splitlines()[0][:300]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """An engine and its sessions; ``migrate`` brings the schema up to date."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self.engine = _engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        from airfed.node_api.migrations import upgrade

        try:
            upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                f"cannot migrate the node's {self.engine.dialect.name} database: "
                f"{_first_line(exc)}"
            ) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on error.

        A unique-key violation raises :class:`Conflict`; any other database
        failure raises :class:`DatabaseUnavailable`.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise Conflict(f"the key is already taken: {_first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                f"the node's database failed: {_first_line(exc)}"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()
