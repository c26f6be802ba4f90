"""The pages in a real headless Chromium, served by uvicorn on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from airfed.plugins._pages_render import (
    NodeHealth,
    NodeTask,
    PlanRun,
)
from airfed.plugins.pages import PlanSource, create_pages_app
from airfed.sdk.catalog import Performance
from airfed.sdk.spec import PlanSpec
from tests.plugins.test_pages_render import (
    ORGS,
    ROUNDS,
    federated_value,
    local_value,
    sample_page,
    sample_plan,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.browser

_CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test's thread owns no signals
        pass


@pytest.fixture
def plans(tmp_path: Path) -> tuple[PlanSpec, PlanSpec]:
    """Two plans in a real plans folder: one running, one never started."""
    folder = tmp_path / "plans"
    folder.mkdir()
    running, fresh = sample_plan("breast cancer fedavg"), sample_plan("digits cnn", 1)
    for spec in (running, fresh):
        (folder / f"{spec.key}.json").write_text(spec.to_json())
    (folder / "broken.json").write_text('{"schema_version": 1, "key": "x"}')
    return running, fresh


@pytest.fixture
def pages_url(tmp_path: Path, plans: tuple[PlanSpec, PlanSpec]) -> Iterator[str]:
    running, _ = plans
    page = sample_page(running)

    def runs(specs: Sequence[PlanSpec]) -> Mapping[str, PlanRun]:
        airflow_states = {
            t.key: "success" if t.round < ROUNDS else "deferred" for t in running.tasks
        }
        run = PlanRun("manual__2026-12-03", "running", airflow_states)
        return {running.key: run} if running in specs else {}

    async def nodes(
        spec: PlanSpec,
    ) -> tuple[dict[str, NodeTask], list[Performance], list[NodeHealth]]:
        if spec.key != running.key:
            return {}, [], list(page.health)
        return dict(page.node_tasks), list(page.performances), list(page.health)

    app = create_pages_app(
        PlanSource(tmp_path / "plans", runs, nodes), authenticate=False
    )
    port = free_port()
    server = _Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the pages server did not start")
        threading.Event().wait(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in _CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def test_plan_list_then_plan_page(
    browser: webdriver.Chrome, pages_url: str, plans: tuple[PlanSpec, PlanSpec]
) -> None:
    running, fresh = plans
    browser.get(f"{pages_url}/")

    rows = browser.find_elements(By.CSS_SELECTOR, "#plans tbody tr")
    assert [r.get_attribute("data-plan-key") for r in rows] == [running.key, fresh.key]
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[0].text.startswith("breast cancer fedavg")
    assert [c.text for c in first[1:5]] == ["fedavg", str(ROUNDS), "a, b, c", "running"]
    done = sum(1 for t in running.tasks if t.round < ROUNDS)
    assert first[5].text == f"{done} / {len(running.tasks)} tasks"
    assert rows[1].find_elements(By.TAG_NAME, "td")[4].text == "not started"
    assert "broken.json cannot be read" in browser.find_element(By.ID, "problems").text
    browser.save_screenshot("/tmp/airfed-pages-list.png")

    rows[0].find_element(By.LINK_TEXT, "breast cancer fedavg").click()
    assert browser.find_element(By.ID, "plan-name").text == "breast cancer fedavg"
    assert browser.find_element(By.ID, "plan-status").text == "running"
    assert browser.find_element(By.ID, "plan-progress").text == (
        f"{done} / {len(running.tasks)} tasks"
    )

    chart = browser.find_element(By.CSS_SELECTOR, "svg.chart[data-metric=accuracy]")
    series = chart.find_elements(By.CSS_SELECTOR, "g.series")
    names = [s.get_attribute("data-series") for s in series]
    assert names == ["federated", *(f"local {o}" for o in ORGS)]
    for group in series:
        assert len(group.find_elements(By.TAG_NAME, "circle")) == ROUNDS - 1
    assert chart.size["width"] > 300 and chart.size["height"] > 150

    values = browser.find_elements(By.CSS_SELECTOR, "table.values tbody tr")
    cells = [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in values]
    federated_mean = sum(federated_value(1, o) for o in ORGS) / len(ORGS)
    locals_ = [local_value(1, o) for o in ORGS]
    assert cells[0] == [
        "1",
        f"{federated_mean:.4f}",
        *(f"{v:.4f}" for v in locals_),
        f"{sum(locals_) / len(locals_):.4f}",
    ]
    assert len(cells) == ROUNDS - 1

    chips = browser.find_elements(By.CSS_SELECTOR, "#tasks .task")
    assert len(chips) == len(running.tasks)
    last_round = browser.find_elements(
        By.CSS_SELECTOR, f"#tasks tr[data-round='{ROUNDS}'] .task"
    )
    assert {c.get_attribute("data-status") for c in last_round} == {"executing"}

    health = {
        row.get_attribute("data-organization"): row.find_elements(By.TAG_NAME, "td")[
            2
        ].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#health tbody tr")
    }
    assert health == {"a": "up", "b": "up", "c": "down"}
    browser.save_screenshot("/tmp/airfed-pages-plan.png")


def test_dag_view_of_a_plan_and_of_another_dag(
    browser: webdriver.Chrome, pages_url: str, plans: tuple[PlanSpec, PlanSpec]
) -> None:
    _, fresh = plans
    browser.get(f"{pages_url}/dags/airfed_plan_{fresh.key}")
    assert browser.find_element(By.ID, "plan-name").text == "digits cnn"
    assert browser.find_element(By.ID, "plan-status").text == "not started"
    assert browser.find_element(By.ID, "no-performances").is_displayed()

    browser.get(f"{pages_url}/dags/example_bash_operator")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not a compute plan"
    browser.find_element(By.LINK_TEXT, "Federated learning").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#plans tbody tr")
