"""Webcam and video FPS of the real app: ``python app.py`` with the committed weights, S1 and S4, on one runtime.

Video: the Video tab's endpoint on ``examples/vtest.mp4`` (its own processing FPS). Webcam: headless Chromium
(``/usr/bin/chromium``) streams a 640×480 fake camera through the Webcam tab for 20 s; FPS is annotated frames back.
Run from the repo root: ``PYTHONPATH=.:tests python scripts/app_fps.py [--runtime auto] [--out docs/app/fps-cpu.json]``.
Screenshots go to ``artifacts/app-fps/``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from app_support import EXAMPLES, ROOT, stream_webcam, write_y4m
from gradio_client import Client, handle_file
from playwright.sync_api import sync_playwright

from starnet_demo.tools.loadtest import serve_app

SHOTS = ROOT / "artifacts" / "app-fps"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
         "--use-fake-ui-for-media-stream"]


def webcam_fps(browser, url: str, variant: str, runtime: str, seconds: float = 20) -> dict:
    page = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"]).new_page()
    page.goto(url)
    page.wait_for_selector(".gradio-container")
    page.get_by_label("Variant").click()
    page.get_by_role("option", name=f"StarNet-{variant.upper()}").click()
    page.get_by_label("Runtime").click()
    page.get_by_role("option", name=runtime, exact=True).click()
    frames, fps = stream_webcam(page, seconds, timeout_ms=120_000)
    shot = SHOTS / f"webcam_{variant}_{runtime}.png"
    page.screenshot(path=str(shot))
    page.close()
    return {"kind": "webcam", "variant": variant, "runtime": runtime, "frames_back": frames,
            "fps": round(fps, 2), "screenshot": str(shot.relative_to(ROOT))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", default="auto")
    p.add_argument("--variants", default="s1,s4")
    p.add_argument("--out", default="docs/app/fps-cpu.json")
    args = p.parse_args()
    SHOTS.mkdir(parents=True, exist_ok=True)
    camera = write_y4m(SHOTS / "camera.y4m", frames=60)
    variants = args.variants.split(",")
    results = []
    with serve_app({"HF_HUB_OFFLINE": "1"}) as server:
        client = Client(server.url, verbose=False)
        for v in variants:  # the first request loads (and exports) the model, outside the timing
            client.predict(handle_file(str(EXAMPLES / "bus.jpg")), v, "cpu", 0.25, 0.45, 640, [], args.runtime,
                           api_name="/detect_image")
            _, summary, _ = client.predict(handle_file(str(EXAMPLES / "vtest.mp4")), v, "cpu", 0.25, 0.45, 640,
                                           False, [], args.runtime, api_name="/detect_video")
            results.append({"kind": "video", "variant": v, "runtime": args.runtime, "video": "vtest.mp4",
                            "frames": summary["frames"], "processing_fps": summary["processing_fps"]})
            print(results[-1], flush=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"])
            for v in variants:
                results.append(webcam_fps(browser, server.url, v, args.runtime))
                print(results[-1], flush=True)
            browser.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "load_avg_1min_end": round(os.getloadavg()[0], 2),
                               "imgsz": 640, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
