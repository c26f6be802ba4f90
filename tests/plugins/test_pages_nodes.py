"""The plan page asks real nodes over mutual TLS with the orchestrator's identity."""

from __future__ import annotations

from pathlib import Path

import httpx

from airfed.plugins.pages import MutualTlsNodes, PlanSource, create_pages_app
from airfed.sdk.network import Network
from tests.plugins.test_pages_render import sample_plan
from tests.support.nodes import start_nodes


async def test_nodes_answer_and_a_stopped_node_is_down(
    network: Network, tmp_path: Path
) -> None:
    spec = sample_plan(rounds=1)
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / f"{spec.key}.json").write_text(spec.to_json())
    source = PlanSource(plans, lambda specs: {}, MutualTlsNodes(network.root))
    transport = httpx.ASGITransport(app=create_pages_app(source, authenticate=False))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://pages"
    ) as client:
        with start_nodes(network, ["a", "b"]):
            tasks, performances, health = await MutualTlsNodes(network.root)(spec)
            page = await client.get(f"/plans/{spec.key}")
        missing = await client.get("/plans/no-such-plan")

    assert tasks == {} and performances == []
    by_org = {h.organization: h for h in health}
    assert [h.organization for h in health] == ["a", "b", "c"]
    assert by_org["a"].ok and by_org["b"].ok
    assert by_org["a"].url == network.organization("a").node_url
    assert "database: sqlite" in by_org["a"].detail
    assert not by_org["c"].ok
    assert "cannot reach the node" in by_org["c"].detail

    assert page.status_code == 200
    assert page.text.count('class="status status-done">up<') == 2
    assert page.text.count('class="status status-failed">down<') == 1
    assert "the node of c did not answer" in page.text
    assert missing.status_code == 404
