"""The Video tab in a real browser (Debian's headless Chromium through Playwright, as ``test_browser.py``): Stop
cancels a video that is being detected, and the server's work on it ends within seconds, its files removed."""

from __future__ import annotations

import threading
import time

import pytest
from app_support import boxy_weights, serve, write_video
from playwright.sync_api import sync_playwright

from starnet_demo.tools.appfps import CHROMIUM, FLAGS
from starnet_demo.ui import files

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.is_file(),
                                                   reason="Debian's chromium is missing: apt-get install chromium")]


def video_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("video-")]


def wait_for(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_stop_cancels_the_video_being_detected(tmp_path, one_thread):
    clip = write_video(tmp_path / "long.mp4", frames=400, fps=10)  # 40 s of video: minutes of work
    with serve(boxy_weights(tmp_path / "weights"), tmp_path / "examples-cache") as (_, url), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector(".gradio-container")
        page.get_by_role("tab", name="Video").click()
        page.locator("#video-in input[type=file]").set_input_files(str(clip))
        page.locator("#video-in video").wait_for(timeout=60_000)  # uploaded and shown
        page.locator("#video-run").click()
        wait_for(lambda: "video-encode" in video_threads(), timeout=120)
        time.sleep(1.5)
        page.locator("#video-stop").click()
        took = wait_for(lambda: not video_threads(), timeout=5)
        print(f"the server stopped {took:.2f} s after Stop")
        browser.close()
    assert not list(files.output_dir().glob("*.mp4"))
