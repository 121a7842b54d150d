"""The Video tab in a real browser (Debian's headless Chromium through Playwright, as ``test_browser.py``): Stop
cancels a video that is being detected, and the server's work on it ends within seconds, its files removed."""

from __future__ import annotations

import time

import pytest
from app_support import encoding, video_threads, wait_for, write_video
from playwright.sync_api import sync_playwright

from starnet_demo.tools.appfps import CHROMIUM, FLAGS
from starnet_demo.ui import files

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.is_file(),
                                                   reason="Debian's chromium is missing: apt-get install chromium")]


def test_stop_cancels_the_video_being_detected(tmp_path, served_app):
    clip = write_video(tmp_path / "long.mp4", frames=400, fps=10)  # 40 s of video: minutes of work
    _, url = served_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector(".gradio-container")
        page.get_by_role("tab", name="Video").click()
        page.locator("#video-in input[type=file]").set_input_files(str(clip))
        page.locator("#video-in video").wait_for(timeout=60_000)  # uploaded and shown
        page.locator("#video-run").click()
        wait_for(encoding, timeout=120)
        time.sleep(1.5)
        page.locator("#video-stop").click()
        took = wait_for(lambda: not video_threads(), timeout=5)
        print(f"the server stopped {took:.2f} s after Stop")
        browser.close()
    assert not list(files.output_dir().glob("*.mp4"))
