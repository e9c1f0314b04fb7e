"""The web page at `/` in a real headless browser: Debian's chromium driven by Selenium through the
system chromedriver (no browser download). The page's readings must be the service's readings."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")
pytest.importorskip("selenium")

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from trocr_tune.config import Config, load_config
from trocr_tune.serve import ServeSettings, model_decoder
from trocr_tune.serve.app import create_app

from conftest import line_image, scanned_page
from serving import ALTO, PAGE, Server, call, multipart, page_image, readings

MODEL = "trocr-tune/base-htr"
KEY = "s3cret"


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message + ": .ci/run installs them")  # CI must run this test, never skip it
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg: Config = load_config(None, [f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    decoder = model_decoder(MODEL, cfg, ServeSettings(device="cpu"))
    app = create_app(ServeSettings(device="cpu", api_key=KEY), cfg, lambda: decoder)
    with Server(app) as running:
        running.wait_ready()
        yield running


def _read(driver: Any, files: list[Path]) -> None:
    driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    driver.find_element(By.ID, "read").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text not in ("", "Reading..."))


def _rows(driver: Any) -> list[dict[str, Any]]:
    """The results table: id, text, confidence (None for '-'), has a thumbnail, per row."""
    out = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr"):
        cells = tr.find_elements(By.TAG_NAME, "td")
        conf = cells[3].text.split("\n")[0]
        thumb = cells[1].find_elements(By.CSS_SELECTOR, "img, canvas")
        out.append(
            {
                "id": cells[0].text,
                "text": cells[2].text,
                "confidence": None if conf == "-" else float(conf),
                "thumbnail": bool(thumb) and thumb[0].size["width"] > 0,
            }
        )
    return out


def _assert_rows_are(rows: dict[str, dict[str, Any]], want: dict[str, tuple[Any, float]]) -> None:
    """Each line the service read shows its text, confidence and a thumbnail cropped by its box."""
    for line_id, (text, confidence) in want.items():
        assert rows[line_id]["text"] == text
        assert rows[line_id]["confidence"] == pytest.approx(confidence, abs=0.005)
        assert rows[line_id]["thumbnail"]


def _offered(driver: Any, name: str) -> bytes:
    """The file the Download link offers, which must be shown and named `name`."""
    link = driver.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download") == name
    downloaded = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.text()).then(done, (e) => done('failed: ' + e));",
        link.get_attribute("href"),
    )
    return str(downloaded).encode("utf-8")


def _severe_console(driver: Any) -> list[str]:
    # The deliberate 401 is a network error in the log; anything else (CSP, script) is a defect.
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "401" not in e["message"]
    ]


def test_lines_read_in_the_page_equal_the_api(browser: Any, server: Server, tmp_path: Path) -> None:
    words = ["uno dos", "tres", "cuatro cinco seis"]
    images = [line_image(tmp_path / f"line{i}.png", w) for i, w in enumerate(words)]
    body, head = multipart([("images", p.name, p.read_bytes()) for p in images])
    status, _, raw = call(server.url + "/v1/lines", body, {**head, "X-API-Key": KEY})
    assert status == 200
    expected = json.loads(raw)["lines"]

    browser.get(server.url + "/")
    assert browser.title == "trocr-tune"
    # Without the key: the service's 401 message, shown as an error, no table.
    _read(browser, images)
    status_el = browser.find_element(By.ID, "status")
    assert "API key" in status_el.text and status_el.get_attribute("class") == "error"
    assert not browser.find_element(By.ID, "results").is_displayed()

    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "read").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "results").is_displayed())
    rows = _rows(browser)
    assert [r["id"] for r in rows] == [p.name for p in images]
    assert [r["text"] for r in rows] == [line["text"] for line in expected]
    for row, line in zip(rows, expected, strict=True):
        assert row["confidence"] == pytest.approx(line["confidence"], abs=0.005)  # shown with 2 decimals
        assert row["thumbnail"]
    assert browser.find_element(By.ID, "status").text == "3 line(s) read."
    assert _severe_console(browser) == []


@pytest.mark.parametrize("document", [ALTO, PAGE], ids=["alto", "page"])
def test_page_and_xml_filled_and_downloaded(
    browser: Any, server: Server, tmp_path: Path, document: str
) -> None:
    image = page_image(tmp_path / "scan.png")
    xml = tmp_path / "page.xml"
    xml.write_text(document, encoding="utf-8")
    body, head = multipart([("image", image.name, image.read_bytes()), ("xml", xml.name, xml.read_bytes())])
    status, _, served = call(server.url + "/v1/pages", body, {**head, "X-API-Key": KEY})
    assert status == 200
    want = readings(etree.fromstring(served))

    browser.get(server.url + "/")
    browser.find_element(By.ID, "key").send_keys(KEY)
    _read(browser, [image, xml])
    assert browser.find_element(By.ID, "status").text == "2 line(s) read, 1 skipped: page.xml is ready."
    rows = {r["id"]: r for r in _rows(browser)}
    assert set(rows) == {"l1", "l2", "l3"}  # l3 lies outside the image: kept, not read
    _assert_rows_are(rows, want)
    assert _offered(browser, "page.xml") == served  # the file offered is the service's filled XML
    assert _severe_console(browser) == []


def test_whole_page_image_segmented_and_downloaded(browser: Any, server: Server, tmp_path: Path) -> None:
    image = tmp_path / "letter.png"
    scanned_page(image)
    body, head = multipart([("image", image.name, image.read_bytes())])
    status, _, served = call(server.url + "/v1/pages", body, {**head, "X-API-Key": KEY})
    assert status == 200
    want = readings(etree.fromstring(served))
    assert len(want) == 10

    browser.get(server.url + "/")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "whole").click()
    _read(browser, [image])
    assert browser.find_element(By.ID, "status").text == "10 line(s) read: letter.xml is ready."
    rows = {r["id"]: r for r in _rows(browser)}
    assert set(rows) == set(want)
    _assert_rows_are(rows, want)
    assert _offered(browser, "letter.xml") == served
    # Two images with "Whole page" ticked: one page at a time, said before anything is sent.
    _read(browser, [image, image])
    assert browser.find_element(By.ID, "status").text == "For a whole page, choose exactly one page image."
    assert _severe_console(browser) == []
