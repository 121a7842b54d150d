"""The load test, short: 4 gradio_client users for 15 s against ``app.py`` in its own process, through the CLI.

The long run (8 users, 60 s; figures in the README) is ``python -m starnet_demo loadtest``. Here the figures are only
checked for being there and consistent, never against a time: the machine is shared.
"""

from __future__ import annotations

import json

import pytest
from app_support import boxy_weights

from starnet_demo.cli import main
from starnet_demo.tools.loadtest import DEFAULT_MIX, serve_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadtest-app")
    (root / "gradio").mkdir()
    (root / "tmp").mkdir()
    env = {"STARNET_WEIGHTS_DIR": str(boxy_weights(root / "weights", ("s1", "s2", "yolov8n"))), "HF_HUB_OFFLINE": "1",
           "GRADIO_EXAMPLES_CACHE": str(root / "examples-cache"), "GRADIO_TEMP_DIR": str(root / "gradio"),
           "TMPDIR": str(root / "tmp")}
    with serve_app(env) as server:
        yield server


def test_short_load_test(served, tmp_path, capsys):
    out = tmp_path / "loadtest.json"
    assert main(["loadtest", "--url", served.url, "--pid", str(served.pid), "--users", "4", "--duration", "15",
                 "--warmup", "3", "--variants", "s1,s2", "--imgsz", "160", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failed"] == 0 and report["errors"] == []
    assert report["load_requests"]["done"] >= 2 * len(DEFAULT_MIX) and report["load_requests"]["failed"] == 0
    kinds = report["by_kind"]
    assert report["done"] >= 10 and kinds["image"]["done"] >= 5  # 6 in 10 requests are images
    assert all(v["failed"] == 0 for v in kinds.values()) and report["webcam_fps"]["p50"] > 0
    assert report["latency_s"]["p50"] > 0 and report["queue_wait_s"]["p95"] is not None
    assert report["throughput_rps"] > 0
    rss = report["rss_mb"]
    assert rss["start"] > 100  # the server's own memory, a Python process with torch and gradio loaded
    assert len(rss["timeline"]) >= 2 and isinstance(rss["flat"], bool)
    assert f"{report['done']} done, 0 failed" in capsys.readouterr().out
    assert served.alive()


def test_unknown_request_kind_is_one_line(capsys):
    assert main(["loadtest", "--url", "http://127.0.0.1:9/", "--mix", "uploads=1"]) == 2
    assert capsys.readouterr().err == ("error: unknown request kind 'uploads' in --mix; use image, video, latency, "
                                       "star, webcam\n")
