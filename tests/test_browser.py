"""The app in a real browser: Playwright drives Debian's headless Chromium against ``app.py`` on 127.0.0.1.

One test clicks an example image and checks the boxes drawn on the result; another feeds Chromium's fake camera
from a Y4M clip made here, streams it through the Webcam tab, and measures the annotated frames per second coming
back; three more run the "Why stars" views (star or sum on the detector, the 2D toy, EigenCAM per model) from their
buttons. Screenshots and the measured FPS go to ``artifacts/browser/``. Skipped only where ``/usr/bin/chromium`` is
missing; ``.ci/run`` installs it. ``STARNET_WEBCAM_VARIANTS=s1,s4`` times more variants.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_support import BUS, ROOT, boxy_weights, serve, stream_webcam
from PIL import Image
from playwright.sync_api import sync_playwright

from starnet_demo.tools.appfps import CHROMIUM, FLAGS, write_y4m

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is missing: apt-get install chromium")

ARTIFACTS = ROOT / "artifacts" / "browser"
VARIANTS = [v.strip() for v in os.environ.get("STARNET_WEBCAM_VARIANTS", "s1").split(",") if v.strip()]
STREAM_S = 10.0  # how long the webcam test streams
CAMERA_FPS = 20  # the fake camera's rate (its clip's header)
BOX_RGB = np.array([163, 81, 251])  # supervision's default colour for class 0 ("person"), the class boxy_weights makes


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    weights = boxy_weights(tmp_path_factory.mktemp("browser-weights"),
                           tuple(dict.fromkeys(["s1", *VARIANTS, "yolov8n"])))  # yolov8n: the CAM view's default
    with serve(weights, tmp_path_factory.mktemp("examples-cache")) as (_, address):
        yield address


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = write_y4m(tmp_path_factory.mktemp("camera") / "street.y4m", frames=30, fps=CAMERA_FPS)
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
    data = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cached_files() -> int:
    """Files in this process's Gradio cache (the app is served in-process)."""
    return sum(p.is_file() for p in Path(gr.utils.get_upload_folder()).rglob("*"))


def box_pixels(rgb: np.ndarray) -> int:
    return int((np.abs(rgb.astype(int) - BOX_RGB).max(axis=2) < 12).sum())


def test_example_image_shows_boxes(browser, url):
    page = open_app(browser, url)
    page.locator("img[src*='bus.jpg']").first.click()  # the bus example: fills the inputs and runs (lazy cache)
    line = page.locator("#image-line")
    line.get_by_text("object").wait_for(timeout=120_000)
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
    before = cached_files()
    frames, fps = stream_webcam(page, STREAM_S)
    assert page.locator("#webcam-out img").get_attribute("src").startswith("data:image/jpeg;answers=")
    assert cached_files() == before  # frames come and go inline, as data URLs: none is saved
    rates = page.locator("#webcam-rates")  # measured in the page: the camera's rate, the rate shown, the lag
    rates.get_by_text("behind").wait_for(timeout=10_000)
    line = rates.inner_text().strip()
    camera = re.fullmatch(r"Camera (\d+\.\d) FPS · shown \d+\.\d FPS · \d+\.\d frames \(\d+ ms\) behind", line)
    assert camera, line
    # the frames the camera delivers, painted or not: a page that counts only the painted ones, on a busy core,
    # reads a third to a half of the camera's rate
    assert 0.75 * CAMERA_FPS <= float(camera[1]) <= 1.25 * CAMERA_FPS, line
    page.screenshot(path=str(ARTIFACTS / f"webcam_{variant}.png"))
    frame = fetch_image(page, "#webcam-out img")
    (ARTIFACTS / f"webcam_{variant}.json").write_text(json.dumps({
        "variant": variant, "frames_back": frames, "seconds": round(STREAM_S, 1), "fps": round(fps, 2),
        "camera": "Chromium fake camera, 640x480 Y4M", "weights": "random init + P5 person bias (tests)",
        "imgsz": 640, "screenshot": str(ARTIFACTS / f"webcam_{variant}.png")}, indent=2) + "\n")
    page.close()  # ends the stream, which holds the app's one webcam slot (app.WEBCAM_STREAMS) until then
    assert frames >= 2, "no annotated frames came back from the webcam stream"
    assert frame.shape == (480, 640, 3) and box_pixels(frame) > 200


def test_webcam_offers_a_choice_of_camera(browser, url):
    """Two cameras: Gradio's own picker (the arrow beside Record) lists both, and the one picked streams."""
    flags = [f for f in FLAGS if f != "--use-fake-device-for-media-stream"]
    two = browser.browser_type.launch(executable_path=str(CHROMIUM),
                                      args=[*flags, "--use-fake-device-for-media-stream=device-count=2"])
    try:
        page = open_app(two, url)
        page.get_by_role("tab", name="Webcam").click()
        page.get_by_text("Click to Access Webcam").click()
        page.get_by_label("select input source").click()
        picker = page.locator("#webcam-in select")
        assert picker.locator("option").all_inner_texts() == ["fake_device_0", "fake_device_1"]
        picker.select_option(label="fake_device_1")
        page.wait_for_function("() => document.querySelector('#webcam-in video').srcObject.getVideoTracks()[0]"
                               ".label === 'fake_device_1'")
        page.locator("button:visible", has_text="Record").first.click()
        page.locator("#webcam-out img").wait_for(timeout=90_000)
    finally:
        two.close()  # ends its stream too


def open_why_stars(browser, url, view: str):
    page = open_app(browser, url)
    page.get_by_role("tab", name="Why stars", exact=True).click()
    page.get_by_role("tab", name=view, exact=True).click()
    return page


def gallery_images(page, gallery: str, count: int, timeout_ms: int = 120_000) -> list[np.ndarray]:
    """Wait for ``count`` images in a gallery, then fetch them as RGB arrays."""
    page.wait_for_function(f"document.querySelectorAll('{gallery} img').length >= {count}", timeout=timeout_ms)
    images = page.locator(f"{gallery} img")
    return [fetch_image(page, f"{gallery} img >> nth={i}") for i in range(images.count())]


def test_star_vs_sum_view(browser, url):
    page = open_why_stars(browser, url, "Star or sum")
    page.locator("#star-vs-sum-run").click()
    images = gallery_images(page, "#star-vs-sum-gallery", 4)
    page.screenshot(path=str(ARTIFACTS / "why_star_vs_sum.png"), full_page=True)
    original = np.asarray(Image.open(BUS).convert("RGB"))
    assert images[0].shape == original.shape and box_pixels(images[0]) > 500  # the star pass's boxes
    assert page.get_by_text("sum in stage 2").first.is_visible()


def test_star_toy_view(browser, url, one_thread):
    page = open_why_stars(browser, url, "Toy: star or sum in 2D")
    page.locator("#toy-run").click()
    line = page.locator("#toy-line")
    line.get_by_text("held-out accuracy").wait_for(timeout=120_000)
    page.locator("#toy-out img").wait_for()
    page.screenshot(path=str(ARTIFACTS / "why_star_toy.png"), full_page=True)
    figure = fetch_image(page, "#toy-out img")
    assert "star" in line.inner_text() and figure.shape[1] > figure.shape[0]  # two panels side by side


def test_cam_view(browser, url):
    page = open_why_stars(browser, url, "Where each model looks")
    page.locator("#cam-run").click()
    images = gallery_images(page, "#cam-gallery", 2)
    page.screenshot(path=str(ARTIFACTS / "why_cam.png"), full_page=True)
    assert all(img.shape == np.asarray(Image.open(BUS)).shape for img in images[:2])
    assert page.get_by_text("YOLOv8n (reference):").first.is_visible()
