"""The demo in a real browser: Debian's Chromium driven by Playwright, on loopback.

Uploads a real photo, waits for the cut-out, switches view and candidate, downloads the
result, tries a model that cannot load, and saves a screenshot (path printed; also copied to
``$S3OD_TEST_ARTIFACTS`` when set).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s3od.errors import ModelNotFoundError

from .conftest import SAMPLES, SHARED_DATA

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason="Debian's chromium is not installed (apt-get install -y chromium)"),
]
pytest.importorskip("gradio", reason="the [demo] extra is not installed")
playwright = pytest.importorskip("playwright.sync_api",
                                 reason="playwright (Python package) is not installed")

from s3od.serving.demo import DEMO_CSS, build_demo  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo() -> Path:
    """A real photo: a DAVIS frame when ../shared is present, else a bundled sample."""
    frame = SHARED_DATA / "davis2016" / "images" / "blackswan_00000.jpg"
    return frame if frame.is_file() else SAMPLES / "cat.jpg"


@pytest.fixture(scope="module")
def demo_url(tiny_remover):
    def loader(name: str):
        if name == "broken":
            raise ModelNotFoundError("no weights for 'broken' in this test")
        return tiny_remover

    blocks = build_demo(tiny_remover, loader=loader, initial_name="tiny",
                        model_names=["tiny", "broken"], examples=[SAMPLES / "coffee.jpg"])
    port = _free_port()
    blocks.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                          quiet=True, css=DEMO_CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


def _output_png(page) -> np.ndarray:
    """The pixels the page shows in the cut-out panel, fetched from its own URL."""
    src = page.locator("#s3od-output img").first.get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)))


def test_upload_cutout_views_download_screenshot(demo_url, tmp_path):
    photo = _photo()
    width, height = Image.open(photo).size
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1150},
                                    accept_downloads=True)
            page.goto(demo_url, wait_until="domcontentloaded")
            page.locator("#s3od-input input[type=file]").set_input_files(str(photo))

            page.wait_for_selector("#s3od-output img", timeout=60_000)
            cut = _output_png(page)
            assert cut.shape == (height, width, 4)  # RGBA at the photo's own size
            labels = page.locator("#s3od-candidate label")
            assert labels.count() >= 2
            assert "(best)" in page.locator("#s3od-candidate").inner_text()
            ambiguity = page.locator("#s3od-ambiguity").inner_text()
            # One of the IoU head's four verdicts (serving.demo.ambiguity_text), never empty.
            assert any(v in ambiguity for v in ("Ambiguous", "agree", "Unsure", "prefers"))
            page.screenshot(path=str(tmp_path / "demo-cutout.png"), full_page=True)

            old_src = page.locator("#s3od-output img").first.get_attribute("src")
            page.locator("#s3od-view label", has_text="mask").click()
            page.wait_for_function(
                "old => document.querySelector('#s3od-output img')?.src !== old", arg=old_src,
                timeout=30_000)
            mask = _output_png(page)
            assert mask.shape == (height, width)  # greyscale mask view
            np.testing.assert_array_equal(mask, cut[..., 3])

            old_src = page.locator("#s3od-output img").first.get_attribute("src")
            labels.first.click()  # candidate #1 instead of the best one
            page.wait_for_function(
                "old => document.querySelector('#s3od-output img')?.src !== old", arg=old_src,
                timeout=30_000)
            assert _output_png(page).shape == (height, width)

            with page.expect_download(timeout=30_000) as info:
                page.locator("#s3od-dl-image").click()
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
            assert saved.suffix == ".png"
            np.testing.assert_array_equal(np.asarray(Image.open(saved)), _output_png(page))

            page.locator("#s3od-model input").click()
            page.get_by_role("option", name="broken").click()
            page.get_by_text("no weights for 'broken'").first.wait_for(timeout=30_000)

            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert Image.open(shot).size[0] >= 1000
    print(f"\nscreenshots: {tmp_path / 'demo-cutout.png'} {shot}")
    artifacts = os.environ.get("S3OD_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for name in ("demo-cutout.png", "demo.png"):
            shutil.copy(tmp_path / name, Path(artifacts) / name)
