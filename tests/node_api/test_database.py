"""Migrations and the asset store on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from airfed.node_api._auth import Caller, identify, issue_token
from airfed.node_api._context import NodeContext
from airfed.node_api._db import Base, Dataset, Function
from airfed.node_api._store import AssetStore
from airfed.node_api.errors import BadRequest, Conflict, Unauthenticated
from airfed.sdk.network import Network, load_node_config
from tests.node_api.conftest import function_archive, sample_folder, write_opener


@pytest.fixture
def context(network: Network, database_url: str) -> Iterator[NodeContext]:
    config = load_node_config(network.root / "a" / "node.yaml")
    ctx = NodeContext.open(dataclasses.replace(config, database_url=database_url))
    yield ctx
    ctx.db.dispose()


def test_migrations_create_the_schema_the_models_describe(context: NodeContext) -> None:
    context.db.migrate()  # a second run changes nothing

    with context.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert {"datasets", "data_samples", "functions", "models", "tasks"} <= tables


def _put(context: NodeContext, path: Path) -> dict[str, object]:
    return {"opener": context.objects.put_file(path)}


def test_dataset_sample_and_function_registration(
    context: NodeContext, tmp_path: Path
) -> None:
    store = AssetStore(context)
    owner = Caller("a")
    opener = write_opener(tmp_path)

    dataset = store.create_dataset(
        owner, {"metadata": '{"name": "d"}'}, _put(context, opener)
    )
    sample = store.add_sample_path(
        owner, dataset["key"], str(sample_folder(tmp_path, 3.0))
    )
    archive = context.objects.put_file(function_archive(tmp_path))
    function = store.create_function(
        Caller("b"),
        {"metadata": '{"name": "f", "entrypoint": "algo:train"}'},
        {"archive": archive},
    )

    assert store.list_samples(dataset["key"]) == [sample]
    assert store.list_datasets("d")[0]["key"] == dataset["key"]
    assert function["owner"] == "b" and function["checksum"] == archive.checksum
    assert store.list_functions("nomatch") == []


def test_refused_registration_leaves_no_row_and_no_object(
    context: NodeContext, tmp_path: Path
) -> None:
    store = AssetStore(context)
    key = str(uuid.uuid4())
    store.create_dataset(
        Caller("a"),
        {"metadata": f'{{"name": "d", "key": "{key}"}}'},
        _put(context, write_opener(tmp_path)),
    )
    objects_before = sorted(context.objects.objects_dir.iterdir())

    with pytest.raises(Conflict):
        store.create_dataset(
            Caller("a"),
            {"metadata": f'{{"name": "e", "key": "{key}"}}'},
            _put(context, write_opener(tmp_path)),
        )
    with pytest.raises(BadRequest):
        store.create_function(
            Caller("a"),
            {"metadata": "{}"},
            {"archive": context.objects.put_bytes(b"x")},
        )

    with context.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1
        assert session.scalar(select(func.count()).select_from(Function)) == 0
    assert sorted(context.objects.objects_dir.iterdir()) == objects_before


def test_tokens_identify_users_of_the_node_organization(context: NodeContext) -> None:
    token = issue_token(context.db, "alice")
    scope = {"extensions": {"tls": {"client_organization": "a"}}}
    members = frozenset({"a", "b"})

    caller = identify(
        scope, f"Bearer {token}", db=context.db, node_organization="a", members=members
    )

    assert caller == Caller("a", "alice")
    with pytest.raises(Unauthenticated):
        identify({}, None, db=context.db, node_organization="a", members=members)
    with pytest.raises(Unauthenticated):
        identify(
            scope,
            "Bearer afn_wrong",
            db=context.db,
            node_organization="a",
            members=members,
        )
    with pytest.raises(BadRequest):
        issue_token(context.db, "no spaces please")
