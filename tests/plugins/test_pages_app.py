"""The pages app when its sources fail: it says what is wrong, it does not crash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from airfed.plugins._pages_render import PlanRun
from airfed.plugins.pages import MutualTlsNodes, PlanSource, create_pages_app
from airfed.sdk.spec import PlanSpec
from tests.plugins.test_pages_render import sample_plan


def _unreachable_database(specs: Sequence[PlanSpec]) -> Mapping[str, PlanRun]:
    raise ConnectionRefusedError("database is down")


async def _get(source: PlanSource, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_pages_app(source, authenticate=False))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://pages"
    ) as client:
        return await client.get(path)


async def test_missing_network_and_database_are_reported(tmp_path: Path) -> None:
    spec = sample_plan(rounds=1)
    (tmp_path / f"{spec.key}.json").write_text(spec.to_json())
    nodes = MutualTlsNodes(tmp_path / "no-network")
    source = PlanSource(tmp_path, _unreachable_database, nodes)

    page = await _get(source, f"/plans/{spec.key}")
    assert page.status_code == 200
    assert "the nodes cannot be asked" in page.text
    assert "Airflow&#39;s database did not answer: ConnectionRefusedError" in page.text

    listing = await _get(source, "/")
    assert listing.status_code == 200 and spec.name in listing.text


async def test_other_dags_are_not_compute_plans(tmp_path: Path) -> None:
    source = PlanSource(tmp_path, lambda specs: {}, None)
    page = await _get(source, "/dags/example_bash_operator")
    assert page.status_code == 200
    assert "Not a compute plan" in page.text
    empty = await _get(source, "/")
    assert "No compute plan has been submitted yet" in empty.text
