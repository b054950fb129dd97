"""The live-alerts page in headless Chromium (Debian's chromium and chromium-driver): it lists the
alerts its filters match, adds new ones as they are stored, and follows a change of filter."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from riskwire.api import create_api
from riskwire.records import Alert
from riskwire.settings import Settings
from storage import delivery as store
from storage import repository
from tests.delivery.servers import serve
from tests.factories import make_alert

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (`make test` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def store_alerts(sessions: sessionmaker[Session], alerts: list[Alert]) -> None:
    with sessions.begin() as session:
        repository.upsert_alerts(session, alerts)
        store.record_alert_events(session, alerts, store.Targets(), datetime.now(UTC))


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the page did not update"
        time.sleep(0.1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_live_page_shows_matching_alerts_as_they_arrive(
    settings: Settings, sessions: sessionmaker[Session], browser: object
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    with sessions.begin() as session:
        token = store.create_api_key(session, "wall", ["alerts:read"], datetime.now(UTC))
    before = [make_alert(ticker="ACME"), make_alert(ticker="BETA")]
    store_alerts(sessions, before)
    api = create_api(settings.model_copy(update={"api_token": "x", "deliver_in_api": False}))
    with serve(api) as url:

        def rows() -> dict[str, str]:
            found = driver.find_elements(By.CSS_SELECTOR, "#alerts tr")  # type: ignore[attr-defined]
            return {r.get_attribute("data-alert-id"): r.text for r in found}

        driver.get(f"{url}/alerts/live?access_token={token}&tickers=ACME")  # type: ignore[attr-defined]
        eventually(lambda: before[0].id in rows())
        assert before[1].id not in rows()  # BETA is filtered out
        status = driver.find_element(By.ID, "status")  # type: ignore[attr-defined]
        eventually(lambda: status.text == "live")

        fresh = make_alert(ticker="ACME", severity="critical")
        store_alerts(sessions, [fresh, make_alert(ticker="BETA")])
        eventually(lambda: fresh.id in rows())
        assert "critical" in rows()[fresh.id] and len(rows()) == 2

        box = driver.find_element(By.ID, "tickers")  # type: ignore[attr-defined]
        box.clear()
        box.send_keys("BETA")
        driver.find_element(By.ID, "apply").click()  # type: ignore[attr-defined]
        eventually(lambda: rows() and all(" BETA " in f" {text} " for text in rows().values()))
        assert before[1].id in rows() and len(rows()) == 2
