"""The load test, short: 4 gradio_client users for 15 s against ``app.py`` in its own process, through the CLI.

The long run (8 users, 60 s; figures in the README) is ``python -m starnet_demo loadtest``. Here the figures are only
checked for being there and consistent, never against a time: the machine is shared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from app_support import server_env

from starnet_demo.cli import main
from starnet_demo.tools.loadtest import DEFAULT_MIX, FolderSampler, serve_app
from starnet_demo.ui.files import GRADIO_CACHE


def test_a_folders_trend_sees_growth_through_the_noise_of_bursts(tmp_path):
    """Over the last half: a count that saws around 1,000 (a video's result files arrive together) has no trend but
    fails the strict 10 % spread; one that grows by 150 files across the half has a trend of 150 on its mean."""
    sampler = FolderSampler({"sawing": tmp_path, "growing": tmp_path}, t0=0)
    for i in range(300):
        sampler.samples["sawing"].append((2.0 * i, 1000 + (150 if i % 10 == 0 else 0), 0, 0))
        sampler.samples["growing"].append((2.0 * i, 900 + i, 0, 0))
    out = sampler.report(measured_from=0)
    assert abs(out["sawing"]["files_trend_last_half_pct"]) < 1 and not out["sawing"]["files_flat_last_half"]
    assert out["growing"]["files_trend_last_half_pct"] == pytest.approx(100 * 150 / 1124.5, abs=0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadtest-app")
    env = {**server_env(root, ("s1", "s2", "yolov8n")), "STARNET_EXPORT_DIR": str(root / "exports")}
    with serve_app(env) as server:
        server.env = env
        yield server


def test_short_load_test(served, tmp_path, capsys, monkeypatch):
    for name in ("GRADIO_TEMP_DIR", "STARNET_EXPORT_DIR"):  # the server's folders, to watch
        monkeypatch.setenv(name, served.env[name])
    out = tmp_path / "loadtest.json"
    assert main(["loadtest", "--url", served.url, "--pid", str(served.pid), "--users", "4", "--duration", "15",
                 "--warmup", "3", "--variants", "s1,yolov8n", "--imgsz", "160", "--sizes", "128,160",
                 "--video-shapes", "320x240,200x320", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failed"] == 0 and report["errors"] == [], report["errors"]
    assert len(report["requests_per_min_by_half"]) == 2 and sum(report["requests_per_min_by_half"]) > 0
    # star maps exist for StarNet only: the YOLOv8n reference is never asked for them, so nothing fails
    assert report["load_requests"]["done"] >= 2 * len(DEFAULT_MIX) - 1 and report["load_requests"]["failed"] == 0
    kinds = report["by_kind"]
    assert report["done"] >= 10 and kinds["image"]["done"] >= 5  # 6 in 10 requests are images
    assert all(v["failed"] == 0 for v in kinds.values()) and report["webcam_fps"]["p50"] > 0
    assert report["latency_s"]["p50"] > 0 and report["queue_wait_s"]["p95"] is not None
    assert report["throughput_rps"] > 0
    rss = report["rss_mb"]
    # the server's own memory (a Python process with torch and gradio loaded, not this one), sampled over the run
    now_mb = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{served.pid}/status").read_text())[1]) / 1024
    # (after the load, the pool and Gradio's sweeps hand memory back, so "now" is compared with the sampled range)
    sampled = [mb for _, mb in rss["timeline"]]
    assert rss["start"] > 100 and 0.5 * min(sampled) <= now_mb <= 1.25 * rss["peak"]
    assert max(rss["start"], rss["after_warmup"], rss["end"], rss["peak_server_alone"]) <= rss["peak"]
    assert 100 < rss["peak_pss"] <= rss["peak"]  # shared library pages counted once, not per process
    times = [t for t, _ in rss["timeline"]]
    assert len(times) >= 2 and times == sorted(times)
    assert rss["flat"] == (rss["growth_pct"] <= 10)  # the report's verdict is its own figure against the 10% rule
    assert report["sizes"] == [128, 160] and report["video_shapes"] == [[320, 240], [200, 320]]
    gradio, exported = report["folders"]["gradio_temp"], report["folders"]["export_cache"]
    assert gradio["path"] == served.env["GRADIO_TEMP_DIR"] and len(gradio["timeline"]) >= 5  # every 2 s
    assert gradio["files_peak"] > 0  # the uploads land there
    every, age = GRADIO_CACHE
    assert gradio["stale_after_s"] == age + 2 * every and gradio["files_stale_peak"] == 0  # none outlived the sweep
    assert exported["path"] == served.env["STARNET_EXPORT_DIR"] and exported["mb_end"] > 0  # the warm-up's export
    assert f"{report['done']} done, 0 failed" in capsys.readouterr().out
    assert served.alive()


def test_unknown_request_kind_is_one_line(capsys):
    assert main(["loadtest", "--url", "http://127.0.0.1:9/", "--mix", "uploads=1"]) == 2
    assert capsys.readouterr().err == ("error: unknown request kind 'uploads' in --mix; use image, video, latency, "
                                       "star, webcam\n")
