"""The node's assets: registration, listing and permission checks.

Metadata of datasets, data samples, functions, models and performances is
listed to every organization of the network; contents follow permissions.
Only the node's own organization registers datasets and data samples (it
owns the data); any member may register a function (it owns the code). The
owner of an asset may always process it.

Registration is all or nothing: the encrypted object is written first, then
checked (metadata, opener syntax, archive safety, free key), and the row is
inserted only if every check passed; otherwise the object is deleted.
"""

from __future__ import annotations

import ast
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from airfed.node_api._archive import ArchiveError, pack_folder, safe_extract
from airfed.node_api._auth import Caller
from airfed.node_api._context import NodeContext
from airfed.node_api._crypto import StoredObject
from airfed.node_api._db import (
    DataSample,
    Dataset,
    Function,
    Model,
    ModelAccess,
    Performance,
)
from airfed.node_api.errors import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PermissionDenied,
)
from airfed.sdk.spec import Permission, Permissions

__all__ = ["AssetStore", "DatasetIn", "FunctionIn", "parse_key", "permissions_of"]

logger = logging.getLogger(__name__)

_MAX_OPENER_BYTES = 10 * 1024 * 1024
_ENTRYPOINT = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetIn(_In):
    key: str | None = None
    name: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=100_000)
    permissions: Permissions = Permissions()
    logs_permission: Permission = Permission()
    data_template: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)


class FunctionInputIn(_In):
    identifier: str = Field(min_length=1, max_length=200, pattern=r"^[\w.-]+$")
    kind: Literal["dataset", "datasamples", "model"]
    multiple: bool = False
    optional: bool = False


class FunctionOutputIn(_In):
    identifier: str = Field(min_length=1, max_length=200, pattern=r"^[\w.-]+$")
    kind: Literal["model", "performance"]


class FunctionIn(_In):
    key: str | None = None
    name: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=100_000)
    entrypoint: str = Field(pattern=_ENTRYPOINT)
    inputs: list[FunctionInputIn] = Field(default_factory=list)
    outputs: list[FunctionOutputIn] = Field(default_factory=list)
    permissions: Permissions = Permissions()


def _describe(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field {location}: {first['msg']}"


_M = TypeVar("_M", bound=BaseModel)


def _parse_metadata(model: type[_M], text: str | None, what: str) -> _M:
    if text is None:
        raise BadRequest(f"the {what} upload lacks its 'metadata' field (JSON)")
    try:
        return model.model_validate_json(text)
    except pydantic.ValidationError as exc:
        raise BadRequest(f"{what} metadata: {_describe(exc)}") from exc


def parse_key(key: str | None) -> str:
    """A UUID key in canonical form; a new UUID4 when ``key`` is None."""
    if key is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(key))
    except ValueError as exc:
        raise BadRequest(f"key {key!r} is not a UUID") from exc


def permissions_of(data: Mapping[str, Any]) -> Permissions:
    return Permissions.model_validate(data)


def _unique_names(items: list[Any], what: str) -> None:
    names = [item.identifier for item in items]
    if len(set(names)) != len(names):
        raise BadRequest(f"function metadata: {what} identifiers must be unique")


class AssetStore:
    """Asset registration and reads for one node, with permission checks."""

    def __init__(self, context: NodeContext) -> None:
        self.ctx = context

    # -- shared checks

    def _require_owner_org(self, caller: Caller, what: str) -> None:
        if caller.organization != self.ctx.organization:
            raise PermissionDenied(
                f"only {self.ctx.organization} registers {what} on its node; "
                f"{caller.id} may not"
            )

    def _discard(self, stored: Mapping[str, StoredObject]) -> None:
        for obj in stored.values():
            self.ctx.objects.delete(obj.object_id)

    def _validate_archive(self, obj: StoredObject, what: str) -> None:
        """Unpack the stored archive into a scratch folder under the limits."""
        options = self.ctx.options
        scratch = Path(tempfile.mkdtemp(prefix="check-", dir=self.ctx.objects.tmp_dir))
        try:
            archive = scratch / "archive"
            self.ctx.objects.decrypt_to(obj.object_id, archive)
            safe_extract(
                archive,
                scratch / "content",
                max_bytes=options.archive_max_bytes,
                max_files=options.archive_max_files,
            )
        except ArchiveError as exc:
            raise BadRequest(f"{what}: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _free_key(session: Session, model: type[Any], key: str, what: str) -> None:
        if session.get(model, key) is not None:
            raise Conflict(f"a {what} with key {key} already exists on this node")

    # -- datasets

    def _discarding_on_error(
        self,
        files: Mapping[str, StoredObject],
        create: Callable[
            [Caller, Mapping[str, str], Mapping[str, StoredObject]], dict[str, Any]
        ],
        caller: Caller,
        fields: Mapping[str, str],
    ) -> dict[str, Any]:
        """Register an asset; if that fails, its uploaded files are deleted."""
        try:
            return create(caller, fields, files)
        except BaseException:
            self._discard(files)
            raise

    def check_dataset_creator(self, caller: Caller) -> None:
        """Fail before an upload is read when the caller may not register."""
        self._require_owner_org(caller, "datasets")

    def create_dataset(
        self,
        caller: Caller,
        fields: Mapping[str, str],
        files: Mapping[str, StoredObject],
    ) -> dict[str, Any]:
        return self._discarding_on_error(files, self._create_dataset, caller, fields)

    def _create_dataset(
        self,
        caller: Caller,
        fields: Mapping[str, str],
        files: Mapping[str, StoredObject],
    ) -> dict[str, Any]:
        self._require_owner_org(caller, "datasets")
        meta = _parse_metadata(DatasetIn, fields.get("metadata"), "dataset")
        key = parse_key(meta.key)
        opener = files.get("opener")
        if opener is None:
            raise BadRequest("the dataset upload lacks its 'opener' file")
        self._check_opener(opener)
        with self.ctx.db.session() as session:
            self._free_key(session, Dataset, key, "dataset")
            row = Dataset(
                key=key,
                name=meta.name,
                description=meta.description,
                owner=self.ctx.organization,
                permissions=meta.permissions.model_dump(mode="json"),
                logs_permission=meta.logs_permission.model_dump(mode="json"),
                metadata_={"data_template": meta.data_template, **meta.metadata},
                opener_object=opener.object_id,
                opener_checksum=opener.checksum,
            )
            session.add(row)
        logger.info("dataset registered key=%s by=%s", key, caller.id)
        return dataset_out(row)

    def _check_opener(self, opener: StoredObject) -> None:
        if opener.size > _MAX_OPENER_BYTES:
            raise BadRequest(f"the opener is larger than {_MAX_OPENER_BYTES} bytes")
        source = b"".join(self.ctx.objects.read(opener.object_id))
        try:
            tree = ast.parse(source, filename="opener.py")
        except (SyntaxError, ValueError) as exc:
            raise BadRequest(f"the opener is not valid Python: {exc}") from exc
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if "load" not in names:
            raise BadRequest("the opener must define load(paths)")

    def list_datasets(self, q: str | None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(Dataset).order_by(Dataset.created_at)
            if q:
                pattern = f"%{q}%"
                query = query.where(
                    or_(Dataset.name.ilike(pattern), Dataset.description.ilike(pattern))
                )
            return [dataset_out(row) for row in session.scalars(query)]

    def get_dataset(self, key: str) -> dict[str, Any]:
        with self.ctx.db.session() as session:
            return dataset_out(self._dataset(session, key))

    @staticmethod
    def _dataset(session: Session, key: str) -> Dataset:
        row = session.get(Dataset, key)
        if row is None:
            raise NotFound(f"no dataset {key} on this node")
        return row

    # -- data samples

    def check_sample_target(self, caller: Caller, dataset_key: str) -> None:
        """Fail before an upload is read: unknown dataset, wrong organization."""
        self._require_owner_org(caller, "data samples")
        with self.ctx.db.session() as session:
            self._dataset(session, dataset_key)

    def add_sample_upload(
        self, caller: Caller, dataset_key: str, files: Mapping[str, StoredObject]
    ) -> dict[str, Any]:
        try:
            archive = files.get("archive")
            if archive is None:
                raise BadRequest("the data sample upload lacks its 'archive' file")
            self.check_sample_target(caller, dataset_key)
            self._validate_archive(archive, "data sample archive")
            return self._insert_sample(caller, dataset_key, archive, "upload")
        except BaseException:
            self._discard(files)
            raise

    def add_sample_path(
        self, caller: Caller, dataset_key: str, path_text: str
    ) -> dict[str, Any]:
        self.check_sample_target(caller, dataset_key)
        path = Path(path_text)
        if not path.is_absolute() or not path.is_dir():
            raise BadRequest(
                f"path {path_text!r} is not an absolute folder on the node"
            )
        self._check_folder_limits(path)
        scratch = Path(tempfile.mkdtemp(prefix="pack-", dir=self.ctx.objects.tmp_dir))
        try:
            packed = pack_folder(path, scratch / "sample.tar.gz")
            stored = self.ctx.objects.put_file(packed)
        except ArchiveError as exc:
            raise BadRequest(f"data sample folder: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        try:
            return self._insert_sample(caller, dataset_key, stored, "path")
        except BaseException:
            self.ctx.objects.delete(stored.object_id)
            raise

    def _check_folder_limits(self, folder: Path) -> None:
        size = 0
        for files, item in enumerate(folder.rglob("*"), start=1):
            size += item.lstat().st_size if item.is_file() else 0
            if files > self.ctx.options.archive_max_files:
                raise BadRequest(
                    f"folder {folder} holds more than "
                    f"{self.ctx.options.archive_max_files} entries"
                )
            if size > self.ctx.options.archive_max_bytes:
                raise BadRequest(
                    f"folder {folder} holds more than "
                    f"{self.ctx.options.archive_max_bytes} bytes"
                )

    def _insert_sample(
        self, caller: Caller, dataset_key: str, stored: StoredObject, source: str
    ) -> dict[str, Any]:
        row = DataSample(
            key=str(uuid.uuid4()),
            dataset_key=dataset_key,
            owner=self.ctx.organization,
            object_id=stored.object_id,
            checksum=stored.checksum,
            size=stored.size,
            source=source,
        )
        with self.ctx.db.session() as session:
            self._dataset(session, dataset_key)
            session.add(row)
        logger.info("data sample registered key=%s dataset=%s", row.key, dataset_key)
        return sample_out(row)

    def list_samples(self, dataset_key: str | None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(DataSample).order_by(DataSample.created_at)
            if dataset_key:
                query = query.where(DataSample.dataset_key == dataset_key)
            return [sample_out(row) for row in session.scalars(query)]

    # -- functions

    def create_function(
        self,
        caller: Caller,
        fields: Mapping[str, str],
        files: Mapping[str, StoredObject],
    ) -> dict[str, Any]:
        return self._discarding_on_error(files, self._create_function, caller, fields)

    def _create_function(
        self,
        caller: Caller,
        fields: Mapping[str, str],
        files: Mapping[str, StoredObject],
    ) -> dict[str, Any]:
        meta = _parse_metadata(FunctionIn, fields.get("metadata"), "function")
        _unique_names(meta.inputs, "input")
        _unique_names(meta.outputs, "output")
        key = parse_key(meta.key)
        archive = files.get("archive")
        if archive is None:
            raise BadRequest("the function upload lacks its 'archive' file")
        self._validate_archive(archive, "function archive")
        with self.ctx.db.session() as session:
            self._free_key(session, Function, key, "function")
            row = Function(
                key=key,
                name=meta.name,
                description=meta.description,
                owner=caller.organization,
                entrypoint=meta.entrypoint,
                inputs=[i.model_dump() for i in meta.inputs],
                outputs=[o.model_dump() for o in meta.outputs],
                permissions=meta.permissions.model_dump(mode="json"),
                object_id=archive.object_id,
                checksum=archive.checksum,
            )
            session.add(row)
        logger.info("function registered key=%s by=%s", key, caller.id)
        return function_out(row)

    def list_functions(self, q: str | None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(Function).order_by(Function.created_at)
            if q:
                pattern = f"%{q}%"
                query = query.where(
                    or_(
                        Function.name.ilike(pattern),
                        Function.description.ilike(pattern),
                    )
                )
            return [function_out(row) for row in session.scalars(query)]

    def get_function(self, key: str) -> dict[str, Any]:
        with self.ctx.db.session() as session:
            row = session.get(Function, key)
            if row is None:
                raise NotFound(f"no function {key} on this node")
            return function_out(row)

    # -- models

    def list_models(
        self, plan_key: str | None, task_key: str | None
    ) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(Model).order_by(Model.created_at)
            if plan_key:
                query = query.where(Model.plan_key == plan_key)
            if task_key:
                query = query.where(Model.task_key == task_key)
            return [model_out(row) for row in session.scalars(query)]

    def get_model(self, key: str) -> dict[str, Any]:
        with self.ctx.db.session() as session:
            return model_out(self._model(session, key))

    @staticmethod
    def _model(session: Session, key: str) -> Model:
        row = session.get(Model, key)
        if row is None:
            raise NotFound(f"no model {key} on this node")
        return row

    def open_model(
        self, caller: Caller, key: str
    ) -> tuple[dict[str, Any], Iterator[bytes]]:
        """Check the caller may read model ``key``, record the access, stream it.

        Users and organizations need the download permission; an
        organization-level caller may also read a model its process
        permission names (a node fetching a task's input).
        """
        with self.ctx.db.session() as session:
            row = self._model(session, key)
            permissions = permissions_of(row.permissions)
            purpose = self._read_purpose(caller, row.owner, permissions)
            if row.deleted_at is not None:
                raise Gone(
                    f"model {key} was transient and has been deleted once the "
                    "tasks that consume it had finished; its metadata and "
                    f"checksum remain at /models/{key}/metadata"
                )
            session.add(
                ModelAccess(
                    model_key=key,
                    organization=caller.organization,
                    user=caller.user,
                    purpose=purpose,
                )
            )
        logger.info("model read key=%s by=%s purpose=%s", key, caller.id, purpose)
        return model_out(row), self.ctx.objects.read(row.object_id)

    @staticmethod
    def _read_purpose(caller: Caller, owner: str, permissions: Permissions) -> str:
        if caller.may(permissions.download, owner if caller.user is None else None):
            return "download"
        if caller.user is None and caller.may(permissions.process, owner):
            return "process"
        raise PermissionDenied(f"{caller.id} is not permitted to download this model")

    def model_accesses(self, caller: Caller, key: str) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            row = self._model(session, key)
            if caller.organization != row.owner:
                caller.require(
                    permissions_of(row.permissions).download,
                    None,
                    "see who accessed this model",
                )
            query = (
                select(ModelAccess)
                .where(ModelAccess.model_key == key)
                .order_by(ModelAccess.id)
            )
            return [
                {
                    "model_key": a.model_key,
                    "organization": a.organization,
                    "user": a.user,
                    "caller": a.organization
                    if a.user is None
                    else f"{a.organization}/{a.user}",
                    "purpose": a.purpose,
                    "at": a.at.isoformat(),
                }
                for a in session.scalars(query)
            ]

    # -- performances

    def list_performances(self, plan_key: str | None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(Performance).order_by(Performance.id)
            if plan_key:
                query = query.where(Performance.plan_key == plan_key)
            return [performance_out(row) for row in session.scalars(query)]


def dataset_out(row: Dataset) -> dict[str, Any]:
    return {
        "key": row.key,
        "kind": "dataset",
        "name": row.name,
        "description": row.description,
        "owner": row.owner,
        "permissions": row.permissions,
        "logs_permission": row.logs_permission,
        "data_template": row.metadata_.get("data_template"),
        "metadata": {k: v for k, v in row.metadata_.items() if k != "data_template"},
        "opener_checksum": row.opener_checksum,
        "created_at": row.created_at.isoformat(),
    }


def sample_out(row: DataSample) -> dict[str, Any]:
    return {
        "key": row.key,
        "kind": "datasample",
        "dataset_key": row.dataset_key,
        "owner": row.owner,
        "checksum": row.checksum,
        "size": row.size,
        "source": row.source,
        "created_at": row.created_at.isoformat(),
    }


def function_out(row: Function) -> dict[str, Any]:
    return {
        "key": row.key,
        "kind": "function",
        "name": row.name,
        "description": row.description,
        "owner": row.owner,
        "entrypoint": row.entrypoint,
        "inputs": row.inputs,
        "outputs": row.outputs,
        "permissions": row.permissions,
        "checksum": row.checksum,
        "created_at": row.created_at.isoformat(),
    }


def model_out(row: Model) -> dict[str, Any]:
    return {
        "key": row.key,
        "kind": "model",
        "owner": row.owner,
        "plan_key": row.plan_key,
        "task_key": row.task_key,
        "identifier": row.identifier,
        "permissions": row.permissions,
        "transient": row.transient,
        "checksum": row.checksum,
        "size": row.size,
        "created_at": row.created_at.isoformat(),
        "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None,
    }


def performance_out(row: Performance) -> dict[str, Any]:
    return {
        "task_key": row.task_key,
        "plan_key": row.plan_key,
        "round": row.round,
        "worker": row.worker,
        "identifier": row.identifier,
        "value": row.value,
        "created_at": row.created_at.isoformat(),
    }
