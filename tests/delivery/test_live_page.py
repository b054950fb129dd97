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
from storage import labels, repository
from tests.delivery.servers import serve
from tests.factories import make_alert, make_document, make_score

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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_alert_opens_on_its_evidence_and_an_analyst_labels_a_document_there(
    settings: Settings, sessions: sessionmaker[Session], browser: object
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    doc = make_document(title="Acme recalls its widgets")
    with sessions.begin() as session:
        analyst = store.create_api_key(session, "ana", ["alerts:read", "labels"], datetime.now(UTC))
        reader = store.create_api_key(session, "wall", ["alerts:read"], datetime.now(UTC))
        repository.upsert_documents(session, [doc])
        repository.upsert_scores(session, [make_score(doc.id, ticker=None, score=0.4)])
    alert = make_alert(ticker="ACME", evidence=(doc.id,))
    store_alerts(sessions, [alert])
    api = create_api(settings.model_copy(update={"api_token": "x", "deliver_in_api": False}))
    with serve(api) as url:

        def open_evidence(token: str) -> object:
            driver.get(f"{url}/alerts/live?access_token={token}")  # type: ignore[attr-defined]
            row = f'tr.alert[data-alert-id="{alert.id}"]'
            eventually(lambda: bool(driver.find_elements(By.CSS_SELECTOR, row)))  # type: ignore[attr-defined]
            driver.find_element(By.CSS_SELECTOR, row).click()  # type: ignore[attr-defined]
            box = f'.evidence[data-document-id="{doc.id}"]'
            eventually(lambda: bool(driver.find_elements(By.CSS_SELECTOR, box)))  # type: ignore[attr-defined]
            return driver.find_element(By.CSS_SELECTOR, box)  # type: ignore[attr-defined]

        box = open_evidence(analyst)
        assert "Acme recalls its widgets" in box.text and "models: positive" in box.text  # type: ignore[attr-defined]
        box.find_element(By.CSS_SELECTOR, 'button[data-label="negative"]').click()  # type: ignore[attr-defined]
        said = box.find_element(By.CLASS_NAME, "labelled")  # type: ignore[attr-defined]
        eventually(lambda: said.text == "labelled negative")
        with sessions() as session:
            (label,) = labels.of_document(session, doc.id)
        assert label.label == "negative" and analyst.startswith(f"rw_{label.labeller}_")

        box = open_evidence(reader)  # a key that may read but not label
        box.find_element(By.CSS_SELECTOR, 'button[data-label="neutral"]').click()  # type: ignore[attr-defined]
        said = box.find_element(By.CLASS_NAME, "labelled")  # type: ignore[attr-defined]
        eventually(lambda: "needs the labels scope" in said.text)
        with sessions() as session:
            assert [r.label for r in labels.of_document(session, doc.id)] == ["negative"]
