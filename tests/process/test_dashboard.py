"""The dashboard at ``GET /`` in a real headless browser (Debian's Chromium, driven by Selenium
through Debian's chromedriver): it shows a running migration's live figures, its Pause button
pauses after the confirmation, a refused request shows the API's errorDescription, and it says
so when mongosync stops answering. A screenshot of the running migration is saved under the
test's tmp_path (its path is printed; run with -s to see it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mongoemu.testing import EmulatorProcess

from pymongosync.clusters import APP_NAME

from .processkit import START, Mongosync, MongosyncFactory, Writer, admin_client, seed, speed_up

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("Chromium and chromedriver are not installed: .ci/run installs Debian's chromium "
           "and chromium-driver (as root); locally: apt-get install chromium chromium-driver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: "
                                "pip install -e '.[test]'")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1360,1500"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromium and chromedriver


def text(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def wait(browser: Any, condition: Any, timeout: float = 90, what: str = "condition") -> Any:
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} not seen on the page; it shows: "
                             f"{browser.find_element(By.TAG_NAME, 'body').text[:3000]}") from None


def script_errors(browser: Any) -> list[str]:
    """JavaScript errors in the console (a refused request's 4xx is logged too: not counted)."""
    return [entry["message"] for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


def rows(browser: Any) -> dict[str, dict[str, Any]]:
    """The namespace table (read in one go: the page rebuilds it every second)."""
    found: dict[str, dict[str, Any]] = browser.execute_script("""
        const found = {};
        for (const row of document.querySelectorAll("#namespaces tr[data-namespace]")) {
          const bar = row.querySelector(".bar");
          found[row.dataset.namespace] = {
            documents: row.querySelector(".docs").textContent,
            partitions: row.querySelector(".parts").textContent,
            rate: row.querySelector(".rate").textContent,
            fraction: bar.dataset.fraction, done: bar.classList.contains("done")};
        }
        return found;""")
    return found


def test_the_dashboard_follows_and_pauses_a_running_migration(
        browser: Any, source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory, tmp_path: Path) -> None:
    seed(source, items=8000, payload=400)
    process = mongosync.clusters(source, destination)
    browser.get(process.url + "/")
    wait(browser, lambda b: text(b, "state") == "IDLE", what="IDLE")
    assert "Start a migration" in text(browser, "next-step")
    assert text(browser, "verification") == "not available"
    assert text(browser, "copy-percent") == "not available"

    # Slow source reads keep the copy running long enough to be watched.
    with admin_client(source) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["find", "getMore"], "blockConnection": True, "blockTimeMS": 2500,
            "appName": APP_NAME})
    writer = Writer(source)
    try:
        assert process.post("start", START) == (200, {"success": True})
        wait(browser, lambda b: text(b, "state") == "RUNNING" and "collection copy"
             in text(b, "phase") and len(rows(b)) >= 2, what="the copy with its namespaces")
        planned = {ns["namespace"] for ns in
                   process.progress()["copyDetails"]["namespaces"]}
        assert set(rows(browser)) == planned == {"app.users", "bulk.items"}
        assert "initial copy is running" in text(browser, "next-step")
        assert not browser.find_element(By.ID, "commit").is_enabled()
        copying = tmp_path / "dashboard-copy.png"
        browser.save_screenshot(str(copying))
        print(f"\ndashboard screenshot during the copy: {copying}")
        speed_up(source)

        wait(browser, lambda b: "change event application" in text(b, "phase")
             and int(b.find_element(By.ID, "lag-chart").get_attribute("data-points")) >= 3
             and text(b, "events-rate") != "-", what="change event application with charts")
        final = process.progress()["copyDetails"]["namespaces"]
        shown = rows(browser)
        for ns in final:  # after the copy the figures stand still: the page shows them exactly
            assert shown[ns["namespace"]]["documents"] == \
                f"{ns['copiedDocuments']:,} / {ns['estimatedDocuments']:,}"
            assert shown[ns["namespace"]]["partitions"] == \
                f"{ns['partitionsDone']} / {ns['partitions']}"
            assert shown[ns["namespace"]]["fraction"] == "1.0000" and shown[ns["namespace"]]["done"]
        assert text(browser, "copy-percent") == "100.0 %"
        lag = process.progress()["lagTimeSeconds"]
        assert text(browser, "lag").endswith(" s") and lag is not None
        screenshot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        print(f"\ndashboard screenshot: {screenshot}")

        # Pause, after the confirmation.
        wait(browser, lambda b: b.find_element(By.ID, "pause").is_enabled(), what="Pause enabled")
        browser.find_element(By.ID, "pause").click()
        alert = wait(browser, expected_conditions.alert_is_present(), what="the confirmation")
        assert "Pause the migration?" in alert.text
        alert.accept()
        wait(browser, lambda b: text(b, "state") == "PAUSED", what="PAUSED")
        assert process.progress()["state"] == "PAUSED"
        assert text(browser, "message") == "pause: accepted"
        assert "press Resume" in text(browser, "next-step")
        assert browser.find_element(By.ID, "resume").is_enabled()
        assert not browser.find_element(By.ID, "commit").is_enabled()

        # A confirmation answered "no" sends nothing.
        browser.find_element(By.ID, "resume").click()
        wait(browser, expected_conditions.alert_is_present(), what="the confirmation").dismiss()
        assert process.progress()["state"] == "PAUSED"

        # What the API refuses is shown with its errorDescription.
        browser.execute_script("window.dashboard.stop(); "
                               "document.getElementById('commit').disabled = false;")
        browser.find_element(By.ID, "commit").click()
        wait(browser, expected_conditions.alert_is_present(), what="the confirmation").accept()
        wait(browser, lambda b: "refused" in text(b, "message"), what="the refusal")
        assert text(browser, "message") == ("commit refused: InvalidState: Currently in PAUSED "
                                            "state, needs to be in RUNNING state")
        assert script_errors(browser) == []
    finally:
        writer.stop()
        speed_up(source)

    # mongosync stops: the page says it does not answer, and keeps the last figures.
    browser.execute_script("window.dashboard.state.timer = setInterval(window.dashboard.poll, "
                           "500);")
    process.kill()
    wait(browser, lambda b: "does not answer" in text(b, "banner"), what="the banner")
    assert text(browser, "state") == "PAUSED (not answering)"
    assert not browser.find_element(By.ID, "resume").is_enabled()


def test_rates_and_etas_come_from_successive_samples(
        browser: Any, source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory) -> None:
    process: Mongosync = mongosync.clusters(source, destination)
    browser.get(process.url + "/")
    wait(browser, lambda b: text(b, "state") == "IDLE", what="IDLE")
    browser.execute_script("window.dashboard.stop();")

    def sample(t: float, copied: int, events: int) -> None:
        progress = {"state": "RUNNING", "info": "collection copy", "canCommit": False,
                    "totalEventsApplied": events, "lagTimeSeconds": None,
                    "collectionCopy": {"estimatedTotalBytes": 10_000_000,
                                       "estimatedCopiedBytes": copied * 1000},
                    "copyDetails": {"phase": "collection copy", "partitions": 4,
                                    "partitionsDone": 1, "copiedDocuments": copied,
                                    "estimatedDocuments": 10_000, "namespaces": [
                                        {"namespace": "shop.orders", "partitions": 4,
                                         "partitionsDone": 1, "copiedDocuments": copied,
                                         "estimatedDocuments": 10_000,
                                         "copiedBytes": copied * 1000,
                                         "estimatedBytes": 10_000_000}]}}
        browser.execute_script("window.dashboard.render(arguments[0], arguments[1]);",
                               progress, t)

    sample(1000.0, 1000, 0)
    sample(1002.0, 2000, 100)  # 1,000 documents in 2 s; 100 events in 2 s
    row = rows(browser)["shop.orders"]
    assert row["rate"] == "500 docs/s" and row["fraction"] == "0.2000" and not row["done"]
    eta = browser.find_element(By.CSS_SELECTOR, "#namespaces tr[data-namespace] .eta").text
    assert eta == "16 s"  # 8,000 documents left at 500/s
    assert text(browser, "copy-rate") == "488.3 KiB/s" and text(browser, "copy-eta") == "16 s"
    assert text(browser, "copy-percent") == "20.0 %"
    assert text(browser, "events-rate") == "50.0"
    assert int(browser.find_element(By.ID, "events-chart").get_attribute("data-points")) == 1
    assert script_errors(browser) == []


def test_the_dashboard_shows_what_the_api_leaves_out_as_not_available(
        browser: Any, source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory) -> None:
    process: Mongosync = mongosync.clusters(source, destination)
    browser.get(process.url + "/")
    wait(browser, lambda b: text(b, "state") == "IDLE", what="IDLE")
    browser.get_log("browser")  # start from a clean console
    browser.execute_script("window.dashboard.stop();")
    # A document with nearly nothing in it: nothing breaks, figures say "not available".
    browser.execute_script("window.dashboard.render(arguments[0]);", {"state": "RUNNING"})
    assert text(browser, "state") == "RUNNING"
    assert text(browser, "copy-documents") == "not available"
    assert text(browser, "namespaces") == "not available yet"
    assert text(browser, "verification") == "not available"
    # A verifier's figures (spec §3.4), when there are some, are shown per side.
    verification = {"source": {"phase": "stream hashing", "estimatedDocumentCount": 42,
                               "hashedDocumentCount": 40, "lagTimeSeconds": 2,
                               "totalCollectionCount": 3, "scannedCollectionCount": 1},
                    "destination": {"phase": "initial hashing", "hashedDocumentCount": 7}}
    browser.execute_script("window.dashboard.render(arguments[0]);", {
        "state": "RUNNING", "info": "change event application", "canCommit": True,
        "lagTimeSeconds": 3, "verification": verification,
        "warnings": ["The amount of available oplog on the source cluster is too small"],
        "error": None})
    table = text(browser, "verification")
    assert "phase stream hashing initial hashing" in table
    assert "hashed 40 7" in table and "collections 3 -" in table
    assert "too small" in text(browser, "warnings")
    assert "press Commit" in text(browser, "next-step")
    assert browser.find_element(By.ID, "commit").is_enabled()
    browser.execute_script("window.dashboard.render(arguments[0]);", {
        "state": "RUNNING", "canCommit": False,
        "error": {"name": "ChangeStreamHistoryLost", "message": "oplog rolled over"}})
    assert text(browser, "state") == "RUNNING (failed)"
    assert "mongosync reset" in text(browser, "next-step")
    assert script_errors(browser) == []


def test_a_poll_answered_after_stop_changes_nothing(
        browser: Any, source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory) -> None:
    """stop() also silences the poll already waiting for its answer: on a loaded machine that
    answer came after the caller had enabled Commit, and disabled it again."""
    process: Mongosync = mongosync.clusters(source, destination)
    browser.get(process.url + "/")
    wait(browser, lambda b: text(b, "state") == "IDLE", what="IDLE")
    # A poll whose /progress answer is held until the test releases it.
    browser.execute_script("""
        window.dashboard.stop();
        const realFetch = window.fetch;
        window.fetch = (url, options) => new Promise((resolve, reject) => {
          window.releaseHeldAnswer = () => realFetch(url, options).then(resolve, reject);
        });
        window.heldPoll = window.dashboard.poll();
        window.fetch = realFetch;
    """)
    browser.execute_script("window.dashboard.stop(); "
                           "document.getElementById('state').textContent = 'SET BY THE TEST'; "
                           "document.getElementById('commit').disabled = false;")
    browser.execute_async_script("const done = arguments[arguments.length - 1]; "
                                 "window.releaseHeldAnswer(); window.heldPoll.then(done);")
    assert text(browser, "state") == "SET BY THE TEST"
    assert browser.find_element(By.ID, "commit").is_enabled()
    assert script_errors(browser) == []
