"""A real browser: headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by
Selenium) loads the dashboard served by ``jiggler-gevent web``, sees the counters and
the charts update, and retries a dead job through the UI. Screenshots go to
``test-artifacts/`` (``JIGGLER_TEST_ARTIFACTS`` to change it).

Skipped, with the reason, when Selenium or the browser is not installed
(``apt-get install chromium chromium-driver``; ``.ci/run`` does it when it can).
Set ``JIGGLER_CHROMIUM`` / ``JIGGLER_CHROMEDRIVER`` to use other binaries.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

from jiggler_gevent.api import Api

from .conftest import REPO_ROOT, XSS, failed_entry, publish_schedules, seed

CHROMIUM = os.environ.get("JIGGLER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("JIGGLER_CHROMEDRIVER") or shutil.which("chromedriver")
ARTIFACTS = pathlib.Path(os.environ.get("JIGGLER_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
WAIT_S = 15

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
pytest.importorskip("jinja2")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER})", allow_module_level=True)

from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="jiggler-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as exc:  # a browser that cannot start here is an environment problem
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium did not start: {type(exc).__name__}: {str(exc)[:300]}")
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, name: str) -> pathlib.Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


def no_alert(driver) -> None:
    """A script injected through job data would have opened an alert."""
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"an alert opened (injected script ran?): {text!r}")


def painted_pixels(driver, canvas_id: str) -> int:
    return driver.execute_script(
        "var c = document.getElementById(arguments[0]);"
        "var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "var n = 0; for (var i = 3; i < d.length; i += 4) { if (d[i] > 0) { n++; } } return n;",
        canvas_id)


def test_overview_live_chart_and_retry_dead_job(browser, web_server, redis_client):
    keys = seed(redis_client)
    server = web_server()
    # a wait that reads the page while a click navigates may find the old one's elements
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))

    browser.get(server.url + "/?poll=2")
    wait.until(lambda d: d.find_element(By.ID, "history-chart").get_attribute("data-drawn"))
    counter = browser.find_element(By.CSS_SELECTOR, '[data-counter="processed"]')
    assert counter.text == "1,234"
    assert browser.find_element(By.CSS_SELECTOR, '[data-counter="dead"]').text == "3"
    assert painted_pixels(browser, "history-chart") > 500  # bars and axes were drawn
    redis_client.incrby(keys.processed, 10)  # live polling picks it up
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-counter="processed"]').text == "1,244")
    wait.until(lambda d: int(d.find_element(By.ID, "live-chart").get_attribute("data-drawn") or 0) >= 2)
    assert "updated" in browser.find_element(By.ID, "live-status").text
    no_alert(browser)
    screenshot(browser, "overview")

    browser.get(server.url + "/dead")
    no_alert(browser)
    rows = [r for r in browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr") if "dead1" in r.text]
    assert len(rows) == 1
    assert "<script>alert" in rows[0].text  # shown as text, not run
    screenshot(browser, "dead-before-retry")
    rows[0].find_element(By.XPATH, ".//button[normalize-space()='Retry now']").click()
    wait.until(lambda d: "Job moved to its queue." in d.find_element(By.TAG_NAME, "body").text)
    no_alert(browser)
    assert "dead1" not in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, "dead-after-retry")
    retried = Api(redis_client).find_job("dead1")
    assert retried is not None and (retried.where, retried.queue) == ("queue", "mail")

    redis_client.zadd(keys.dead("low"), {failed_entry("low1", queue="mail"): 1.0})
    redis_client.sadd(keys.queues, "low")
    browser.get(server.url + "/dead")
    browser.find_element(By.LINK_TEXT, "low (1)").click()
    wait.until(lambda d: "queue=low" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr")
    assert len(rows) == 1 and "low1" in rows[0].text and "retry goes to mail" in rows[0].text
    screenshot(browser, "dead-one-queue")
    rows[0].find_element(By.XPATH, ".//button[normalize-space()='Retry now']").click()
    wait.until(lambda d: "Job moved to its queue." in d.find_element(By.TAG_NAME, "body").text)
    assert "queue=low" in browser.current_url  # back to the narrowed listing
    assert Api(redis_client).find_job("low1").where == "queue"

    search = browser.find_element(By.CSS_SELECTOR, 'form.search input[name="jid"]')
    search.send_keys(" retry1" + Keys.ENTER)  # a jid pasted from a log line
    wait.until(lambda d: d.current_url.endswith("/jobs/retry1"))
    assert "Backtrace" in browser.find_element(By.TAG_NAME, "body").text
    no_alert(browser)
    screenshot(browser, "job-detail")

    try:
        import croniter  # noqa: F401  (the cron extra: publish_schedules has a cron schedule)
    except ImportError:
        pass
    else:
        publish_schedules(redis_client)
        browser.find_element(By.LINK_TEXT, "Periodic").click()
        wait.until(lambda d: d.current_url.endswith("/periodic"))
        no_alert(browser)
        rows = browser.find_elements(By.CSS_SELECTOR, "table.periodic tbody tr")
        assert [r.find_element(By.TAG_NAME, "code").text for r in rows] == [
            XSS, "web.periodic.nobody"]  # the hostile name shown as text, next to run first
        assert "cron */10 * * * *" in rows[0].text and "1h ago" in rows[0].text
        assert "every 1 h (Europe/Paris)" in rows[1].text and "none yet" in rows[1].text
        assert "job not loaded here" in rows[0].text  # the standalone server has no jobs
        screenshot(browser, "periodic")
        rows[0].find_element(By.LINK_TEXT, "low").click()
        wait.until(lambda d: d.current_url.endswith("/queues/low"))

    problems = [entry["message"] for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]
    assert not problems, problems
