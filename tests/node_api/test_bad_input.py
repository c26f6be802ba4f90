"""Bad input gets a clear problem and leaves no half-registered asset.

Every test runs against a node on SQLite and against one on PostgreSQL.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network
from airfed.sdk.node_client import NodeClient
from tests.node_api.conftest import (
    SUM_INPUTS,
    SUM_OUTPUTS,
    function_archive,
    profile,
    sample_folder,
    write_node_options,
    write_opener,
)
from tests.support.nodes import RunningNode, start_node
from tests.support.postgres import temporary_database

MAX_UPLOAD = 1024 * 1024
MAX_FILES = 20
MAX_BYTES = 256 * 1024
TABLES = ("datasets", "data_samples", "functions", "models", "tasks")


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def node_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The node's database: SQLite, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('bad-input-db') / 'node.sqlite'}"
        return
    with temporary_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_network(
    tmp_path_factory: pytest.TempPathFactory, node_database_url: str
) -> Network:
    from airfed.sdk.network import init_network
    from tests.support.ports import free_port_block

    root = tmp_path_factory.mktemp("bad-input")
    return init_network(root / "net", ["a", "b"], base_port=free_port_block(5))


@pytest.fixture(scope="module")
def node(module_network: Network, node_database_url: str) -> Iterator[RunningNode]:
    config = write_node_options(
        module_network,
        "a",
        max_upload_bytes=MAX_UPLOAD,
        archive_max_files=MAX_FILES,
        archive_max_bytes=MAX_BYTES,
    )
    with start_node(config, node_database_url) as running:
        yield running


@pytest.fixture
def client(node: RunningNode, module_network: Network) -> Iterator[NodeClient]:
    with node.client(profile(module_network, "a")) as c:
        yield c


@pytest.fixture(scope="module")
def dataset_key(
    node: RunningNode, module_network: Network, tmp_path_factory: Any
) -> str:
    tmp = tmp_path_factory.mktemp("dataset")
    with node.client(profile(module_network, "a")) as c:
        return str(c.create_dataset({"name": "d"}, write_opener(tmp))["key"])


def _state(node: RunningNode, database_url: str) -> dict[str, Any]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()  # noqa: S608 (fixed names)
            for t in TABLES
        }
    engine.dispose()
    storage = node.config.storage_dir
    rows["objects"] = sorted(p.name for p in (storage / "objects").iterdir())
    rows["tmp"] = sorted(p.name for p in (storage / "tmp").iterdir())
    return rows


@pytest.fixture
def unchanged(
    node: RunningNode, node_database_url: str, dataset_key: str
) -> Iterator[None]:
    """The test's bad requests must leave the database and the store as they were."""
    before = _state(node, node_database_url)
    yield
    after = _state(node, node_database_url)
    assert after == before
    assert after["tmp"] == []


def _problem(call: Any, status: int) -> str:
    with pytest.raises(NodeRequestError) as err:
        call()
    assert err.value.status == status, err.value.detail
    return str(err.value.detail)


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


BAD_ARCHIVES = {
    "traversal": ([_file("../escape.txt")], "leaves the folder"),
    "absolute": ([_file("/etc/owned")], "absolute path"),
    "symlink": ([_symlink("link", "/etc/passwd")], "link"),
    "too_many_files": ([_file(f"f{i}.txt") for i in range(MAX_FILES + 5)], "members"),
    "too_large": ([_file("big.bin", bytes(MAX_BYTES + 1))], "bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_unsafe_sample_archive_is_refused(
    case: str, client: NodeClient, dataset_key: str, tmp_path: Path, unchanged: None
) -> None:
    members, words = BAD_ARCHIVES[case]
    archive = _tar_gz(tmp_path / "bad.tar.gz", members)

    detail = _problem(lambda: client.add_sample_archive(dataset_key, archive), 400)

    assert words in detail


@pytest.mark.parametrize("case", ["traversal", "symlink", "too_many_files"])
def test_unsafe_function_archive_is_refused(
    case: str, client: NodeClient, tmp_path: Path, unchanged: None
) -> None:
    members, words = BAD_ARCHIVES[case]
    archive = _tar_gz(tmp_path / "bad.tar.gz", members)
    metadata = {
        "name": "f",
        "entrypoint": "algo:train",
        "inputs": SUM_INPUTS,
        "outputs": SUM_OUTPUTS,
    }

    detail = _problem(lambda: client.create_function(metadata, archive), 400)

    assert words in detail


def test_oversized_upload_is_413(
    client: NodeClient, dataset_key: str, tmp_path: Path, unchanged: None
) -> None:
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(MAX_UPLOAD + 1))

    detail = _problem(lambda: client.add_sample_archive(dataset_key, big), 413)

    assert str(MAX_UPLOAD) in detail


def test_oversized_upload_without_declared_length_is_413(
    client: NodeClient, dataset_key: str, unchanged: None
) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; '
        'filename="a.tar.gz"\r\n\r\n'
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield os.urandom(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client._http.post(
        f"/datasets/{dataset_key}/samples",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ("not json", "Invalid JSON"),
        (json.dumps({"description": "no name"}), "field name"),
        (json.dumps({"name": "d", "permissions": "everyone"}), "field permissions"),
        (json.dumps({"name": "d", "colour": "red"}), "field colour"),
        (json.dumps({"name": "d", "key": "not-a-uuid"}), "not a UUID"),
    ],
)
def test_malformed_dataset_metadata_is_400(
    metadata: str, words: str, client: NodeClient, tmp_path: Path, unchanged: None
) -> None:
    opener = write_opener(tmp_path)
    with opener.open("rb") as handle:
        response = client._http.post(
            "/datasets",
            data={"metadata": metadata},
            files={"opener": ("opener.py", handle)},
        )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert words in problem["detail"]


def test_opener_that_is_not_python_is_400(
    client: NodeClient, tmp_path: Path, unchanged: None
) -> None:
    opener = tmp_path / "opener.py"
    opener.write_text("def load(paths:\n")

    detail = _problem(lambda: client.create_dataset({"name": "d"}, opener), 400)

    assert "not valid Python" in detail


def test_malformed_function_metadata_is_400(
    client: NodeClient, tmp_path: Path, unchanged: None
) -> None:
    archive = function_archive(tmp_path)
    metadata = {"name": "f", "entrypoint": "no colon", "inputs": [], "outputs": []}

    detail = _problem(lambda: client.create_function(metadata, archive), 400)

    assert "field entrypoint" in detail


def test_sample_for_unknown_dataset_is_404(
    client: NodeClient, tmp_path: Path, unchanged: None
) -> None:
    unknown = str(uuid.uuid4())
    folder = sample_folder(tmp_path, 1.0)

    detail = _problem(lambda: client.add_sample_folder(unknown, folder), 404)

    assert unknown in detail


def test_sample_path_that_is_not_an_absolute_folder_is_400(
    client: NodeClient, dataset_key: str, unchanged: None
) -> None:
    _problem(lambda: client.add_sample_path(dataset_key, "relative/folder"), 400)
    _problem(lambda: client.add_sample_path(dataset_key, "/no/such/folder"), 400)


def test_duplicate_keys_are_409(
    client: NodeClient, tmp_path: Path, node: RunningNode, node_database_url: str
) -> None:
    key = str(uuid.uuid4())
    client.create_dataset({"name": "first", "key": key}, write_opener(tmp_path))
    metadata = {"name": "f", "entrypoint": "algo:train", "key": key}
    client.create_function(metadata, function_archive(tmp_path))
    before = _state(node, node_database_url)

    assert key in _problem(
        lambda: client.create_dataset(
            {"name": "again", "key": key}, write_opener(tmp_path)
        ),
        409,
    )
    assert key in _problem(
        lambda: client.create_function(metadata, function_archive(tmp_path)), 409
    )
    assert _state(node, node_database_url) == before
    assert client.get_dataset(key)["name"] == "first"


def test_other_organization_cannot_register_data(
    node: RunningNode,
    module_network: Network,
    dataset_key: str,
    tmp_path: Path,
    unchanged: None,
) -> None:
    with node.client(profile(module_network, "b")) as b:
        _problem(lambda: b.create_dataset({"name": "d"}, write_opener(tmp_path)), 403)
        _problem(
            lambda: b.add_sample_folder(dataset_key, sample_folder(tmp_path, 1)), 403
        )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"key": "k"}, "field plan_key"),
        (
            {
                "key": "k",
                "plan_key": "p",
                "function_key": "f",
                "worker": "a",
                "rank": -1,
                "round": 0,
            },
            "field rank",
        ),
        (
            {
                "key": "k",
                "plan_key": "p",
                "function_key": "f",
                "worker": "b",
                "rank": 0,
                "round": 0,
            },
            "worker b",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_task_is_400(
    body: Any, words: str, client: NodeClient, unchanged: None
) -> None:
    response = client._http.post("/tasks", json=body)
    assert response.status_code == 400
    assert words in response.json()["detail"]


def test_unknown_routes_and_methods_answer_problems(client: NodeClient) -> None:
    for method, path, status in [
        ("GET", "/nowhere", 404),
        ("DELETE", "/datasets", 405),
    ]:
        response = client._http.request(method, path)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
    assert _problem(lambda: client.get_dataset(str(uuid.uuid4())), 404)
    assert _problem(lambda: client.get_task("nope"), 404)


def test_the_node_runs_on_the_database_of_the_parameter(
    client: NodeClient, node_database_url: str
) -> None:
    expected = "postgresql" if node_database_url.startswith("postgresql") else "sqlite"
    assert client.health()["database"] == expected
