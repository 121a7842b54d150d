"""The app in a real browser: Playwright drives Debian's headless Chromium against ``app.py`` on 127.0.0.1.

One test clicks an example image and checks the boxes drawn on the result; the other feeds Chromium's fake camera
from a Y4M clip made here, streams it through the Webcam tab, and measures the annotated frames per second coming
back. Screenshots and the measured FPS go to ``artifacts/browser/``. Skipped only where ``/usr/bin/chromium`` is
missing; ``.ci/run`` installs it. ``STARNET_WEBCAM_VARIANTS=s1,s4`` times more variants.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from app_support import BUS, ROOT, boxy_weights, serve, stream_webcam, write_y4m
from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is missing: apt-get install chromium")

ARTIFACTS = ROOT / "artifacts" / "browser"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
VARIANTS = [v.strip() for v in os.environ.get("STARNET_WEBCAM_VARIANTS", "s1").split(",") if v.strip()]
STREAM_S = 10.0  # how long the webcam test streams
BOX_RGB = np.array([163, 81, 251])  # supervision's default colour for class 0 ("person"), the class boxy_weights makes


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    weights = boxy_weights(tmp_path_factory.mktemp("browser-weights"), tuple(dict.fromkeys(["s1", *VARIANTS])))
    with serve(weights, tmp_path_factory.mktemp("examples-cache")) as (_, address):
        yield address


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = write_y4m(tmp_path_factory.mktemp("camera") / "street.y4m")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"])
        yield chromium
        chromium.close()


def open_app(browser, url):
    page = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"]).new_page()
    page.goto(url)
    page.wait_for_selector(".gradio-container")  # Gradio keeps connections open: never wait for network idle
    return page


def fetch_image(page, selector: str) -> np.ndarray:
    src = page.locator(selector).get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def box_pixels(rgb: np.ndarray) -> int:
    return int((np.abs(rgb.astype(int) - BOX_RGB).max(axis=2) < 12).sum())


def test_example_image_shows_boxes(browser, url):
    page = open_app(browser, url)
    page.locator("img[src*='bus.jpg']").first.click()  # the bus example: fills the inputs and runs (lazy cache)
    line = page.locator("#image-line")
    line.get_by_text("objects").wait_for(timeout=120_000)
    n = int(line.inner_text().split()[0])
    page.locator("#image-out img").wait_for()
    page.screenshot(path=str(ARTIFACTS / "image_example.png"), full_page=True)
    annotated = fetch_image(page, "#image-out img")
    original = np.asarray(Image.open(BUS).convert("RGB"))
    assert n > 0 and annotated.shape == original.shape
    assert box_pixels(annotated) > 500 > box_pixels(original)  # box outlines and label backgrounds were drawn


@pytest.mark.parametrize("variant", VARIANTS)
def test_fake_webcam_streams_annotated_frames(browser, url, variant):
    page = open_app(browser, url)
    if variant != "s1":
        page.get_by_label("Variant").click()
        page.get_by_role("option", name=f"StarNet-{variant.upper()}").click()
    frames, fps = stream_webcam(page, STREAM_S)
    page.screenshot(path=str(ARTIFACTS / f"webcam_{variant}.png"))
    frame = fetch_image(page, "#webcam-out img")
    (ARTIFACTS / f"webcam_{variant}.json").write_text(json.dumps({
        "variant": variant, "frames_back": frames, "seconds": round(STREAM_S, 1), "fps": round(fps, 2),
        "camera": "Chromium fake camera, 640x480 Y4M", "weights": "random init + P5 person bias (tests)",
        "imgsz": 640, "screenshot": str(ARTIFACTS / f"webcam_{variant}.png")}, indent=2) + "\n")
    assert frames >= 2, "no annotated frames came back from the webcam stream"
    assert frame.shape == (480, 640, 3) and box_pixels(frame) > 200
