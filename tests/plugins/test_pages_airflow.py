"""The pages inside a real Airflow api-server: authentication and the UI's iframe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from airfed.sdk._airflow import airflow_environment
from airfed.sdk.network import Network
from airfed.sdk.spec import PlanSpec
from tests.plugins.test_pages_browser import browser  # noqa: F401 - a fixture
from tests.plugins.test_pages_render import sample_plan
from tests.support.ports import free_port

pytestmark = [pytest.mark.airflow, pytest.mark.browser]

_START_TIMEOUT = 180.0


@dataclass
class _ApiServer:
    url: str
    username: str
    password: str
    plan: PlanSpec

    def token(self) -> str:
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": self.username, "password": self.password},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"api-server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"api-server not up after {_START_TIMEOUT} s")


@pytest.fixture
def api_server(network: Network, tmp_path: Path) -> Iterator[_ApiServer]:
    """Airflow's api-server alone (no scheduler), with airfed's plugin loaded."""
    port = free_port()
    home = tmp_path / "airflow"
    env = {**os.environ, **airflow_environment(home, network.root, port=port)}
    subprocess.run(
        _airflow("db", "migrate"),
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    plan = sample_plan("breast cancer fedavg")
    (home / "plans" / f"{plan.key}.json").write_text(plan.to_json())
    # The DAG factory turns the spec into DAG airfed_plan_<key> (no dag-processor).
    subprocess.run(
        _airflow("dags", "reserialize"),
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    log = tmp_path / "api-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _airflow("api-server", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process, log)
        passwords = (home / "simple_auth_manager_passwords.json").read_text()
        yield _ApiServer(url, "admin", json.loads(passwords)["admin"], plan)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_pages_need_an_airflow_user_and_show_in_the_ui(
    api_server: _ApiServer,
    browser: webdriver.Chrome,  # noqa: F811 - the fixture imported above
) -> None:
    url, plan = api_server.url, api_server.plan

    # (1) No token, a forged one, then a real one.
    assert httpx.get(f"{url}/airfed-pages/", timeout=30).status_code == 401
    forged = httpx.get(f"{url}/airfed-pages/", cookies={"_token": "forged"}, timeout=30)
    assert forged.status_code in (401, 403)
    token = api_server.token()
    page = httpx.get(
        f"{url}/airfed-pages/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert page.status_code == 200
    assert plan.name in page.text

    # (2) The UI lists both views.
    plugins = httpx.get(
        f"{url}/api/v2/plugins",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["plugins"]
    (airfed,) = [p for p in plugins if p["name"] == "airfed"]
    views = {v["url_route"]: v for v in airfed["external_views"]}
    assert views["airfed"]["destination"] == "nav"
    assert views["airfed-plan"]["href"] == "/airfed-pages/dags/{DAG_ID}"

    # (3) A DAG run (queued: no scheduler runs here) as Airflow's DB holds it.
    dag_id = f"airfed_plan_{plan.key}"
    run = httpx.post(
        f"{url}/api/v2/dags/{dag_id}/dagRuns",
        headers={"Authorization": f"Bearer {token}"},
        json={"logical_date": None, "dag_run_id": "pages-test"},
        timeout=30,
    )
    assert run.status_code == 200, run.text

    # (4) In the browser, with the UI's cookie: the menu page in its iframe,
    # then a plan opened from inside the iframe.
    browser.get(f"{url}/api/v2/version")
    browser.add_cookie({"name": "_token", "value": token, "path": "/"})
    browser.get(f"{url}/plugin/airfed")
    wait = WebDriverWait(browser, 60)
    wait.until(
        expected_conditions.frame_to_be_available_and_switch_to_it(
            (By.CSS_SELECTOR, "iframe[title='Federated learning']")
        )
    )
    row = wait.until(
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, f"#plans tr[data-plan-key='{plan.key}']")
        )
    )
    assert "waiting" in row.text
    # Airflow's database answered: no problem is reported on the page.
    assert browser.find_elements(By.ID, "problems") == []
    browser.switch_to.default_content()
    browser.save_screenshot("/tmp/airfed-pages-in-airflow.png")

    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    browser.find_element(By.LINK_TEXT, plan.name).click()
    name = wait.until(
        expected_conditions.presence_of_element_located((By.ID, "plan-name"))
    )
    assert name.text == plan.name
    assert browser.find_element(By.ID, "plan-status").text == "waiting"
    assert "pages-test" in browser.find_element(By.ID, "plan-facts").text

    # (5) The plan's tab on its DAG.
    browser.switch_to.default_content()
    browser.get(f"{url}/dags/{dag_id}/plugin/airfed-plan")
    wait.until(
        expected_conditions.frame_to_be_available_and_switch_to_it(
            (By.CSS_SELECTOR, "iframe[title='Compute plan']")
        )
    )
    name = wait.until(
        expected_conditions.presence_of_element_located((By.ID, "plan-name"))
    )
    assert name.text == plan.name
    browser.switch_to.default_content()
    browser.save_screenshot("/tmp/airfed-pages-dag-tab.png")
