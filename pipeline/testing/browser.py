"""A real headless Chromium (Debian's `chromium` + `chromium-driver`), driven through Selenium, for
tests and benchmarks of the run report.

Each session gets a new empty profile and no network side-channels (no component updates, no
sync, no background networking), so what it measures is the page alone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class PageLoad:
    """Navigation timing of one page load, in milliseconds from the start of navigation."""

    dom_content_loaded_ms: float
    load_ms: float
    first_contentful_paint_ms: float | None
    transfer_bytes: int  # the document itself
    images_loaded: int  # images complete by the load event
    images_total: int


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Selenium WebDriver on a fresh headless Chromium profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="zipmap-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load_page(driver: Any, url: str) -> PageLoad:
    """Open `url` (returns after its load event) and read the browser's own timings."""
    driver.get(url)
    timing = driver.execute_script(
        """
        const nav = performance.getEntriesByType('navigation')[0];
        const fcp = performance.getEntriesByName('first-contentful-paint')[0];
        const imgs = Array.from(document.images);
        return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, fcp: fcp ? fcp.startTime : null,
                bytes: nav.transferSize || nav.decodedBodySize, done: imgs.filter(i => i.complete
                && i.naturalWidth > 0).length, total: imgs.length};
        """
    )
    return PageLoad(
        dom_content_loaded_ms=float(timing["dcl"]),
        load_ms=float(timing["load"]),
        first_contentful_paint_ms=None if timing["fcp"] is None else float(timing["fcp"]),
        transfer_bytes=int(timing["bytes"]),
        images_loaded=int(timing["done"]),
        images_total=int(timing["total"]),
    )


def screenshot(driver: Any, path: str, *, full_page: bool = True, max_height: int = 8000) -> None:
    """A PNG of the page (its whole height, up to `max_height` pixels, when `full_page`)."""
    if full_page:
        width = driver.get_window_size()["width"]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height) + 100, max_height))
    driver.save_screenshot(path)


def wait_for_images(driver: Any, timeout_s: float = 10.0) -> int:
    """Scroll through the whole page (so lazy images load), wait until every image has loaded;
    returns how many there are."""
    import time

    driver.execute_script("window.scrollTo(0, document.documentElement.scrollHeight)")
    deadline = time.monotonic() + timeout_s
    while True:
        pending = driver.execute_script(
            "const imgs = Array.from(document.images); imgs.forEach(i => i.loading = 'eager');"
            "return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length"
        )
        if pending == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    driver.execute_script("window.scrollTo(0, 0)")
    if pending:
        raise TimeoutError(f"{pending} images did not load within {timeout_s} s")
    return int(driver.execute_script("return document.images.length"))
