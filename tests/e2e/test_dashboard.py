"""The operator's dashboard (/dashboard) in a real browser: Debian's chromium, headless, driven by
selenium against `allocation serve`. The page is served without a token, takes one, shows a
namespace's figures, and shows a sale made over HTTP within two seconds (its stock stream).
With SAVE_SCREENSHOT=1 it also saves the README's screenshot, docs/dashboard.png (a test run
otherwise writes nothing into the repository)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BROWSER = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
FIGURES = ("total", "consumed", "held", "available")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = [str(path) for path in (BROWSER, DRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"the dashboard test needs {' and '.join(missing)}: run "
                    "scripts/ensure_browser.sh (as root it installs Debian's chromium and "
                    "chromium-driver)")
    options = Options()
    options.binary_location = str(BROWSER)
    # --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,720", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def put(api: str, namespace: str, sku: str, total: int) -> None:
    r = requests.put(f"{api}/v1/{namespace}/items/{sku}", json={"total": total}, timeout=10)
    assert r.status_code == 201, r.text


_keys = itertools.count()


def sell(api: str, namespace: str, sku: str, qty: int = 1) -> None:
    r = requests.post(f"{api}/v1/{namespace}/items/{sku}/decrements", json={"qty": qty},
                      headers={"Idempotency-Key": f"dash-{next(_keys)}"}, timeout=10)
    assert r.status_code == 200, r.text


def cell(driver: WebDriver, sku: str, field: str) -> str:
    return driver.find_element(
        By.CSS_SELECTOR, f'tr[data-sku="{sku}"] td[data-field="{field}"]').text


def figures(driver: WebDriver, sku: str) -> tuple[str, ...]:
    return tuple(cell(driver, sku, field) for field in FIGURES)


def connect(driver: WebDriver, api: str, token: str, namespace: str) -> None:
    driver.get(f"{api}/dashboard")
    for field, value in (("token", token), ("namespace", namespace)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#connect button[type=submit]").click()


def until(driver: WebDriver, seconds: float, check: Callable[[WebDriver], object],
          what: str) -> None:
    WebDriverWait(driver, seconds, poll_frequency=0.05).until(check, f"timed out: {what}")


def test_the_page_and_its_assets_need_no_token_and_nothing_else_is_served(api: str) -> None:
    page = requests.get(f"{api}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name, media_type in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = requests.get(f"{api}/dashboard/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(media_type)
        assert f"/dashboard/{name}" in page.text
    for other in ("index.html", "..%2Fdashboard.py", "dashboard.py", "nope.js"):
        assert requests.get(f"{api}/dashboard/{other}", timeout=10).status_code == 404


def test_a_refused_token_is_said_so(api: str, namespace: str, browser: WebDriver) -> None:
    connect(browser, api, "not-a-token", namespace)
    until(browser, 5, lambda d: "refused (401)" in d.find_element(By.ID, "status").text,
          "the page to say the token was refused")


def test_the_figures_then_a_sale_within_two_seconds(api: str, admin_token: str,
                                                    namespace: str, browser: WebDriver) -> None:
    for sku, total in (("hoodie", 120), ("mug", 40), ("poster", 15), ("sticker", 500)):
        put(api, namespace, sku, total)
    sell(api, namespace, "hoodie", 7)
    sell(api, namespace, "poster", 15)
    r = requests.post(f"{api}/v1/{namespace}/reservations", timeout=10,
                      json={"lines": [{"sku": "mug", "qty": 2}]},
                      headers={"Idempotency-Key": "dash-hold"})
    assert r.status_code == 201, r.text

    connect(browser, api, admin_token, namespace)
    until(browser, 10, lambda d: figures(d, "hoodie") == ("120", "7", "0", "113")
          and figures(d, "mug") == ("40", "0", "2", "38"), "the items' figures")
    assert admin_token not in browser.current_url
    assert cell(browser, "poster", "eta") == "sold out"
    # The first rows are streamed: wait for the stream, so the sale below is the stream's.
    until(browser, 10, lambda d: d.find_element(
        By.CSS_SELECTOR, 'tr[data-sku="hoodie"]').get_attribute("data-live") == "true",
        "hoodie's stock stream")

    sell(api, namespace, "hoodie", 3)
    until(browser, 2, lambda d: figures(d, "hoodie") == ("120", "10", "0", "110"),
          "the sale to show within two seconds")

    def health_shown(d: WebDriver) -> bool:
        drift = d.find_element(By.ID, "drift").text
        return ("database: ok" in d.find_element(By.ID, "ready").text
                and d.find_element(By.ID, "lag").text not in ("…", "unreachable")
                and (drift in ("none", "not measured yet") or "items" in drift))

    until(browser, 10, health_shown, "readiness, ledger lag and drift")
    refused = requests.post(f"{api}/v1/{namespace}/items/poster/decrements", json={"qty": 1},
                            headers={"Idempotency-Key": "dash-refused"}, timeout=10)
    assert refused.status_code == 409, refused.text
    until(browser, 10, lambda d: "insufficient_stock 1" in d.find_element(By.ID, "refusals").text,
          "this namespace's refusal by its reason")

    # Keep selling until the page has a rate (it needs some seconds of history) and an
    # estimate; then take the README's picture.
    def rated(d: WebDriver) -> bool:
        sell(api, namespace, "hoodie")
        sell(api, namespace, "sticker", 4)
        rate, eta = cell(d, "sticker", "rate"), cell(d, "sticker", "eta")
        everywhere = d.find_element(By.CSS_SELECTOR, 'tfoot [data-sum="rate"]').text
        return (bool(re.fullmatch(r"\d+\.\d+", rate)) and float(rate) > 0
                and eta[0].isdigit() and cell(d, "mug", "rate") == "0.00"
                and float(everywhere or 0) > 0)

    WebDriverWait(browser, 20, poll_frequency=0.25).until(rated, "a sale rate and an estimate")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    if os.environ.get("SAVE_SCREENSHOT"):
        assert browser.save_screenshot(str(SCREENSHOT))


def test_a_sales_queue(api: str, admin_token: str, namespace: str, browser: WebDriver) -> None:
    put(api, namespace, "drop-tee", 2)
    sale = f"{api}/v1/{namespace}/sales/drop"
    assert requests.put(sale, json={"skus": ["drop-tee"], "admit_factor": 1},
                        timeout=10).status_code == 201
    for n in range(5):
        assert requests.post(f"{sale}/queue", json={"buyer": f"b{n}"},
                             timeout=10).status_code == 201
    connect(browser, api, admin_token, namespace)

    def row(d: WebDriver) -> list[str]:
        cells = d.find_elements(By.CSS_SELECTOR, 'tr[data-sale="drop"] td')
        return [c.text for c in cells]

    # waiting, admitted, passes used, expired, available: two admitted for two units
    until(browser, 10, lambda d: row(d)[1:6] == ["3", "2", "0", "0", "2"], "the sale's queue")
