"""The web page in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
by Selenium): upload a demo image, wait for the result, check what is shown and that the
downloaded file is the API's answer byte for byte. The screenshot is kept as an artifact."""

from __future__ import annotations

import shutil
import time
import urllib.request

import pytest

from ambsn_jax.serve.app import create_app
from ambsn_jax.serve.loadgen import demo_png
from tests.serve.helpers import http_status, loopback, wait_ready

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test-serve]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
)
H, W = 48, 60


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    # Headless Chromium saves downloads only where told to, through DevTools.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path / "downloads")})
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _post(url: str, body: bytes) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "image/png"})) as response:
        return response.read()


def test_upload_shows_both_images_and_downloads_the_api_bytes(serve_model, browser, tmp_path):
    image = tmp_path / "noisy cat.png"
    image.write_bytes(demo_png(H, W))
    with loopback(create_app(serve_model)) as base:
        wait_ready(lambda path: http_status(base + path))
        browser.get(base + "/")
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: d.find_element(By.ID, "download").is_displayed())
        wait.until(lambda d: d.execute_script("const i = document.getElementById('denoised'); return i.complete && i.naturalWidth > 0"))
        size = browser.execute_script("const i = document.getElementById('denoised'); return [i.naturalWidth, i.naturalHeight]")
        assert size == [W, H]
        assert browser.find_element(By.ID, "status").text.startswith("Done in")
        assert "48" in browser.find_element(By.ID, "noisy-caption").text  # the upload is shown too
        shot = tmp_path / "serve_page.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        browser.find_element(By.ID, "download").click()
        downloaded = tmp_path / "downloads" / "noisy cat_denoised.png"
        deadline = time.monotonic() + 30
        while not downloaded.exists():
            assert time.monotonic() < deadline, f"no download in {list((tmp_path / 'downloads').glob('*'))}"
            time.sleep(0.1)
        assert downloaded.read_bytes() == _post(base + "/v1/denoise", image.read_bytes())


def test_a_refusal_is_shown_in_words(serve_model, browser, tmp_path):
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image at all")
    with loopback(create_app(serve_model)) as base:
        wait_ready(lambda path: http_status(base + path))
        browser.get(base + "/")
        browser.find_element(By.ID, "file").send_keys(str(text))
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 60).until(lambda d: "Not denoised" in status.text)
        assert "the body is not a PNG, JPEG or TIFF image" in status.text
        assert "error" in status.get_attribute("class")
