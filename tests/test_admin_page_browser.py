"""The example's admin page in a real browser: Debian's Chromium (headless) driven by Selenium
through chromium-driver (`make system-deps` installs both), against the example under uvicorn
with a real worker. The page shows a completed job's photo and cut-out (sizes read in the
browser), a click on Retry re-queues a failed job and the page then shows it completed, bad input
(an unknown id, a double click) gets a sentence, and a screenshot is kept: out/admin-page.png."""

from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devstack.stack import sample_photos
from tests.conftest import Aws, StartWorker
from tests.example_app import REPO, LaunchApp, app_env, finished, listing
from tests.example_app import launch_app as launch_app  # the fixture
from tests.helpers import eventually, synthetic_scene

pytestmark = pytest.mark.slow  # uvicorn, a worker and Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACT = REPO / "out" / "admin-page.png"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
PAGE_SECONDS = 30  # bound on one page load or image load in the browser

IMAGES = """
return Array.from(document.querySelectorAll(arguments[0] + ' img')).map(
    img => [img.className, img.complete, img.naturalWidth, img.naturalHeight]);"""

SUBMIT = """
const form = document.createElement('form');
form.method = 'post';
form.action = arguments[0];
document.body.appendChild(form);
form.submit();"""


class Browser:
    """A headless Chromium with a fresh profile. Selenium is synchronous: the test calls each
    method through asyncio.to_thread, so the worker in the test's event loop keeps running."""

    def __init__(self, base_url: str, profile: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(PAGE_SECONDS)
        self.base_url = base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def refresh(self) -> None:
        self.driver.refresh()

    def status(self, job_id: str) -> str | None:
        rows = self.driver.find_elements(By.ID, f"job-{job_id}")
        return rows[0].get_attribute("data-status") if rows else None

    def images(self, job_id: str) -> dict[str, tuple[int, int]]:
        """{class: (naturalWidth, naturalHeight)} of the job row's images, once all loaded."""
        selector = f"#job-{job_id}"

        def loaded(driver: Any) -> list[list[Any]] | None:
            found: list[list[Any]] = driver.execute_script(IMAGES, selector)
            return found if found and all(complete for _, complete, _, _ in found) else None

        found = WebDriverWait(self.driver, PAGE_SECONDS).until(loaded)
        assert found is not None  # until() returns the first truthy answer or raises
        return {name: (width, height) for name, _, width, height in found}

    def click(self, css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def submit(self, action: str) -> None:
        """POST a form to `action`, as the page's buttons do (a click on a button that is gone)."""
        self.driver.execute_script(SUBMIT, action)

    def notice(self) -> str:
        text: str = WebDriverWait(self.driver, PAGE_SECONDS).until(
            lambda driver: driver.find_element(By.ID, "notice").text
        )
        return text

    def screenshot(self, path: Path) -> None:
        """The whole page, beyond the window (Chromium's DevTools capture)."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
async def open_browser(tmp_path: Path) -> AsyncIterator[Any]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    assert not missing, f"{', '.join(missing)} missing: run `make system-deps`"
    browsers: list[Browser] = []

    async def start(base_url: str) -> Browser:
        profile = tmp_path / f"chromium-profile-{len(browsers)}"
        browser = await asyncio.to_thread(Browser, base_url, profile)
        browsers.append(browser)
        return browser

    yield start
    for browser in browsers:
        await asyncio.to_thread(browser.quit)


async def import_one(http: httpx.AsyncClient, aws: Aws, book_id: str, data: bytes) -> str:
    await aws.put(f"uploads/{book_id}/0.jpg", data)
    response = await http.post(
        "/books/import", json=listing(aws, book_id, f"uploads/{book_id}/0.jpg")
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["primary"]["job"]["id"]
    return job_id


async def test_the_admin_page_in_chromium(
    database_url: str,
    aws: Aws,
    start_worker: StartWorker,
    launch_app: LaunchApp,
    open_browser: Any,
    tmp_path: Path,
) -> None:
    app = await launch_app(app_env(database_url, aws))
    await start_worker()
    http = await app.ready()
    coffee = next(path for path in sample_photos() if path.name == "coffee.png")
    with Image.open(coffee) as opened:
        coffee_size = opened.size
    good = await import_one(http, aws, "good", coffee.read_bytes())
    bad = await import_one(http, aws, "bad", b"this photo is not an image")
    assert (await finished(http, good))["status"] == "completed"
    assert (await finished(http, bad))["status"] == "failed"

    browser: Browser = await open_browser(app.url)
    await asyncio.to_thread(browser.open, "/admin")
    title = await asyncio.to_thread(lambda: browser.driver.title)
    assert title == "image-worker admin"
    health = await asyncio.to_thread(lambda: browser.driver.find_element(By.ID, "health").text)
    assert health == "ok"
    # The completed job: its photo and its cut-out, both loaded by the browser at the photo's size.
    assert await asyncio.to_thread(browser.images, good) == {
        "source": coffee_size,
        "cutout": coffee_size,
    }
    assert await asyncio.to_thread(browser.status, bad) == "failed"
    assert await asyncio.to_thread(browser.images, bad) == {"source": (0, 0)}  # not an image
    # The artifact: one completed job, one failed with its error and a Retry button.
    await asyncio.to_thread(browser.screenshot, tmp_path / "admin-page.png")
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "admin-page.png", ARTIFACT)
    with Image.open(ARTIFACT) as shot:
        assert shot.width >= 1000

    # The operator fixes the photo and clicks Retry: the job is queued again and completes.
    await aws.put("books/bad/0.jpg", synthetic_scene((200, 150), seed=22)[0])
    await asyncio.to_thread(browser.click, f"#job-{bad} button.retry")
    assert await asyncio.to_thread(browser.notice) == f"Job {bad} is queued again."
    # A double click reaches the server after the first: a sentence, not an error page.
    await asyncio.to_thread(browser.submit, f"/admin/actions/jobs/{bad}/retry")
    assert (await asyncio.to_thread(browser.notice)).startswith(
        f"Job {bad} was not retried: it is "
    )
    unknown = uuid.uuid4()
    await asyncio.to_thread(browser.submit, f"/admin/actions/jobs/{unknown}/cancel")
    assert await asyncio.to_thread(browser.notice) == f"There is no job {unknown}."
    await asyncio.to_thread(browser.submit, "/admin/actions/jobs/12345/remove-background")
    assert await asyncio.to_thread(browser.notice) == "'12345' is not a job id."

    async def completed_on_the_page() -> bool:
        await asyncio.to_thread(browser.open, "/admin")
        return await asyncio.to_thread(browser.status, bad) == "completed"

    await eventually(completed_on_the_page, timeout=120, interval=0.5)
    assert await asyncio.to_thread(browser.images, bad) == {
        "source": (200, 150),
        "cutout": (200, 150),
    }
    assert await app.stop(), app.output()
