"""Everything a running node holds: its configuration, database and store.

``node.yaml`` may set, besides what :class:`~airfed.sdk.network.NodeConfig`
reads: ``archive_max_bytes`` and ``archive_max_files`` (limits for unpacking
an uploaded archive), ``task_concurrency`` (tasks run at once),
``task_launcher`` (``fork``, the default: tasks are forked from a warm task
launcher with the runtime and numpy loaded; ``exec``: each task starts fresh
interpreters, slower to start) and ``http`` (``httptools``, the default, or
``h11``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.node_api._crypto import FileKeyProvider, ObjectStore
from airfed.node_api._db import Database
from airfed.node_api._executor import Launcher
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import NodeConfig, load_identity_key

__all__ = ["NodeContext", "NodeOptions", "read_options"]


@dataclass(frozen=True)
class NodeOptions:
    archive_max_bytes: int
    archive_max_files: int
    task_concurrency: int
    task_launcher: Launcher
    http: str


def read_options(config: NodeConfig) -> NodeOptions:
    raw: dict[str, Any] = (
        yaml.safe_load((Path(config.home) / "node.yaml").read_text()) or {}
    )
    return NodeOptions(
        archive_max_bytes=int(
            raw.get("archive_max_bytes", 4 * int(config.max_upload_bytes))
        ),
        archive_max_files=int(raw.get("archive_max_files", 100_000)),
        task_concurrency=max(1, int(raw.get("task_concurrency", 2))),
        task_launcher=_task_launcher(raw.get("task_launcher", "fork")),
        http=str(raw.get("http", "httptools")),
    )


def _task_launcher(value: Any) -> Launcher:
    if value not in ("fork", "exec"):
        raise ConfigError(
            f"node.yaml: task_launcher is {value!r}; set it to 'fork' or 'exec'"
        )
    return cast(Launcher, value)


@dataclass
class NodeContext:
    config: NodeConfig
    options: NodeOptions
    db: Database
    objects: ObjectStore
    identity_key: ed25519.Ed25519PrivateKey

    @property
    def organization(self) -> str:
        return str(self.config.organization)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(org.id for org in self.config.network.organizations)

    @property
    def work_dir(self) -> Path:
        return Path(self.config.storage_dir) / "work"

    @classmethod
    def open(cls, config: NodeConfig, *, migrate: bool = True) -> NodeContext:
        db = Database(str(config.database_url))
        if migrate:
            db.migrate()
        objects = ObjectStore(
            Path(config.storage_dir), FileKeyProvider(Path(config.master_key_file))
        )
        return cls(
            config=config,
            options=read_options(config),
            db=db,
            objects=objects,
            identity_key=load_identity_key(Path(config.identity_key_file)),
        )
