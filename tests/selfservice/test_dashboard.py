"""`GET /dashboard` in a real headless Chromium (Debian's, driven through its ChromeDriver): a
user pastes an API key, sees usage per day as a chart and per project as a table with the
ledger's numbers, and the billing button takes it through Stripe's (fake) setup page and back,
billing now on. Screenshots land in `.data/` for a person to look at."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from metering.reports import DateRange
from tests.selfservice.harness import Stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The network is closed here: without these Chromium waits on Google's services.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1100",
)  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".data"
TODAY = dt.datetime.now(dt.UTC).date()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(
    browser: WebDriver, what: str, check: Callable[[WebDriver], bool], within_s: float = 30
) -> None:
    WebDriverWait(browser, within_s, poll_frequency=0.1).until(
        check, f"{what} not on the page within {within_s:.0f}s"
    )


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_dashboard_shows_the_ledger_and_sets_up_billing(stack: Stack, browser: WebDriver) -> None:
    user = stack.account("dashboard")
    noon = dt.datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=dt.UTC)
    for days_ago, project, tokens in (
        (0, 0, 820_000), (1, 1, 1_450_000), (3, 0, 2_100_000), (3, 1, 400_000),
        (6, 0, 610_000), (9, 1, 1_900_000), (13, 0, 300_000), (0, None, 12_345),
    ):  # fmt: skip
        where = "" if project is None else user.projects[project]
        stack.use(user.org_id, where, tokens, noon - dt.timedelta(days=days_ago))
    ledger = stack.ledger.usage(
        user.org_id, period=DateRange(TODAY - dt.timedelta(days=29), TODAY)
    )

    browser.get(stack.url + "/dashboard")
    browser.find_element(By.ID, "api-key").send_keys(user.key)
    browser.find_element(By.ID, "load").click()
    rows_css = "#projects tbody tr"
    wait_for(browser, "the project table", lambda b: len(b.find_elements(By.CSS_SELECTOR,
                                                                           rows_css)) == 3)
    table = {
        row.get_attribute("data-project-id"): (
            row.find_element(By.CSS_SELECTOR, "td.tokens").text,
            row.find_element(By.CSS_SELECTOR, "td.requests").text,
        )
        for row in browser.find_elements(By.CSS_SELECTOR, rows_css)
    }
    assert {k: (number(t), number(r)) for k, (t, r) in table.items()} == {
        p.project_id: (p.tokens, p.requests) for p in ledger.projects
    }
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart svg rect.bar")
    assert [(b.get_attribute("data-day"), number(b.get_attribute("data-tokens") or ""))
            for b in bars] == [(d.day, d.tokens) for d in ledger.days]  # fmt: skip
    tallest = max(bars, key=lambda b: float(b.get_attribute("height") or 0))
    assert number(tallest.get_attribute("data-tokens") or "") == max(d.tokens for d in ledger.days)
    assert number(browser.find_element(By.ID, "period-tokens").text) == sum(
        d.tokens for d in ledger.days
    )
    assert browser.find_element(By.ID, "billing-state").text.lower() == "no payment method"
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))

    # The button: Stripe's page, a card saved there, and back on the dashboard billing is on.
    browser.find_element(By.ID, "setup").click()
    wait_for(browser, "Stripe's setup page", lambda b: "/pay/cs_" in b.current_url)
    browser.find_element(By.ID, "save-card").click()
    wait_for(browser, "the dashboard again", lambda b: b.current_url.endswith("/dashboard"))
    wait_for(
        browser, "billing ok", lambda b: b.find_element(By.ID, "billing-state").text.lower() == "ok"
    )
    assert stack.embed_once(user.key).status_code == 200
    assert browser.find_element(By.ID, "setup").text == "Manage payment method"
    browser.save_screenshot(str(SCREENSHOTS / "dashboard-billing-on.png"))


def test_dashboard_reports_a_bad_key(stack: Stack, browser: WebDriver) -> None:
    browser.get(stack.url + "/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.get(stack.url + "/dashboard")
    browser.find_element(By.ID, "api-key").send_keys("ie_000000000000_wrong")
    browser.find_element(By.ID, "load").click()
    wait_for(browser, "the error", lambda b: "API key" in b.find_element(By.ID, "status").text)
    assert not browser.find_element(By.ID, "report").is_displayed()


class _Form(HTMLParser):
    """The attributes of the dashboard's key form, its key field and its submit button."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id") in ("key-form", "api-key", "load"):
            self.found[str(values["id"])] = values


def test_a_key_entered_before_the_script_runs_stays_out_of_urls(
    stack: Stack, browser: WebDriver
) -> None:
    # Served as is, before any script: the key field has no name (a submitted form would
    # carry no key), the form never submits by GET, and its button waits for the script.
    page = _Form()
    page.feed(stack.call("GET", "/dashboard", None).text)
    assert "name" not in page.found["api-key"]
    assert (page.found["key-form"].get("method") or "get").lower() == "post"
    assert "disabled" in page.found["load"]
    # In the browser, with scripts not (yet) running: Enter in the key field goes nowhere.
    secret = "ie_000000000000_neverinaurl"
    browser.get(stack.url + "/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(stack.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(secret + Keys.ENTER)
        browser.find_element(By.ID, "load").click()
        assert secret not in browser.current_url
        assert browser.current_url == stack.url + "/dashboard"
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
