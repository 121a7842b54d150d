"""``app-fps``: the camera clip carries readable frame indices, the page log is summarised into rates and lags, and the
tool measures the real Webcam tab in headless Chromium (skipped where ``/usr/bin/chromium`` is missing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest
from app_support import boxy_weights, serve
from PIL import Image

from starnet_demo import cli
from starnet_demo.tools.appfps import (
    CHROMIUM,
    descendants,
    pin,
    read_code,
    run,
    split_cores,
    stage_breakdown,
    summarise,
    write_y4m,
)
from starnet_demo.ui import handlers


def y4m_frames(path) -> list[np.ndarray]:
    """The RGB frames of a 4:2:0 Y4M file, as Chromium's fake camera decodes them."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    w, h = (int(t[1:]) for t in header.split()[1:3])
    size = w * h * 3 // 2
    chunks = body.split(b"FRAME\n")[1:]
    return [cv2.cvtColor(np.frombuffer(c[:size], np.uint8).reshape(h * 3 // 2, w), cv2.COLOR_YUV2RGB_I420)
            for c in chunks]


def test_camera_clip_carries_each_frame_index(tmp_path):
    clip = write_y4m(tmp_path / "camera.y4m", frames=12, size=(320, 240), fps=15)
    assert b"F15:1" in clip.read_bytes()[:64]
    frames = y4m_frames(clip)
    assert [read_code(f) for f in frames] == list(range(12))
    jpeg = cv2.imdecode(cv2.imencode(".jpg", frames[7], [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    assert read_code(jpeg) == 7  # the app returns JPEGs
    covered = frames[5].copy()
    covered[150:200, 40:120] = 255  # a label box over part of the code: unread, never misread
    assert read_code(covered) in (None, 5)
    with pytest.raises(ValueError, match="frames"):
        write_y4m(tmp_path / "long.y4m", frames=300)


def test_summary_counts_new_frames_and_lag():
    """A 20 FPS camera; the page shows every camera frame twice at 20 FPS, painted 3 camera frames (150 ms) after the
    camera presented it: 10 new frames/s."""
    camera = [{"t": i * 50.0, "code": i % 64} for i in range(201)]
    shown = [{"t_paint": i * 50.0 + 1, "code": (i // 2 * 2 - 3) % 64} for i in range(201)]
    shown[150]["code"] = None  # an unread code is skipped, not counted as a repeat
    s = summarise(shown, camera, loop=64, declared_fps=20, seconds=5)
    assert s["camera_fps_measured"] == pytest.approx(20) and s["fps"] == pytest.approx(20)
    assert s["new_fps"] == pytest.approx(10, rel=0.05) and s["share_of_camera"] == pytest.approx(0.5, rel=0.05)
    assert s["lag_frames"]["median"] == pytest.approx(3.5, abs=0.5)
    assert s["lag_ms"]["median"] == pytest.approx(176, abs=26)
    assert s["camera_frames_per_new_frame"]["median"] == 2 and s["codes_read"] == 100


def test_lag_uses_the_camera_rate_not_the_pages_sampling_rate():
    """A 30 FPS camera looping 200 frames that a busy page samples at 10 Hz; each shown frame is painted 14 camera
    frames (467 ms) late. Sized from the 10 Hz sampling, the match window (half a loop, 10 s) would reach the same code
    one loop (6.7 s) earlier and report a lag of about 7 s."""
    camera = [{"t": i * 100.0, "code": (3 * i) % 200} for i in range(301)]
    shown = [{"t_paint": i * 100.0 + 1, "code": (3 * i - 14) % 200} for i in range(150, 301)]
    s = summarise(shown, camera, loop=200, declared_fps=30, seconds=10)
    assert s["camera_fps_measured"] == pytest.approx(30) and s["camera_frames_seen_fps"] == pytest.approx(10)
    assert s["lag_frames"]["median"] == pytest.approx(14, abs=0.1)
    assert s["lag_ms"]["median"] == pytest.approx(467, abs=5)
    # Codes read on one frame in ten (1 s apart, longer than the lag): the same figures, also for the frames shown
    # after the last read one was presented.
    camera = [c if i % 10 == 0 else {**c, "code": None} for i, c in enumerate(camera)]
    t = summarise(shown, camera, loop=200, declared_fps=30, seconds=10)
    assert t["camera_fps_measured"] == pytest.approx(30) and t["camera_frames_seen_fps"] == pytest.approx(10)
    assert t["lag_ms"]["p90"] == pytest.approx(467, abs=5) and t["lag_frames"]["median"] == pytest.approx(14, abs=0.1)


def test_stage_breakdown_follows_one_frame():
    """One frame's trip with known times (page ms; the server's in epoch ms from ``origin``): each stage comes out."""
    origin = 1_000_000.0
    log = {"origin": origin, "encodes": [{"t0": 100, "t1": 104, "n": 5000}, {"t0": 200, "t1": 203, "n": 5100}],
           "messages": [{"t": 140, "n": 5000}, {"t": 162, "n": 5000}, {"t": 166, "n": 5100}],
           "shown": [{"n": 5000, "t_load": 170, "t_paint": 185, "code": 1}],
           "camera": [{"t": 60, "code": 0}, {"t": 90, "code": 1}, {"t": 130, "code": 2}]}
    resources = [{"name": "http://h/gradio_api/stream/abc", "start": 105, "answer": 107, "end": 108}]
    trace = [{"n": 4000, "start": origin + 20, "decode_ms": 9, "detect_ms": 9, "annotate_ms": 9, "encode_ms": 9,
              "end": origin + 50},
             {"n": 5000, "start": origin + 110, "decode_ms": 3, "detect_ms": 30, "annotate_ms": 5, "encode_ms": 2,
              "end": origin + 150},
             {"n": 5100, "start": origin + 151, "decode_ms": 3, "detect_ms": 30, "annotate_ms": 5, "encode_ms": 2,
              "end": origin + 165}]
    out = stage_breakdown(log, resources, trace, seconds=10)
    medians = {k: v["median"] for k, v in out["ms"].items()}
    assert medians == {"camera_wait": 10, "browser_encode": 4, "upload": 2, "queue_wait": 3, "decode": 3,
                       "detect": 30, "annotate": 5, "encode": 2, "message": 12,
                       "show": 8, "render": 15}
    assert out["frames"] == out["matched_to_server"] == 1 and out["median_sum_ms"] == 94  # 185 - 90 less the 1 ms gap
    assert out["sent"] == 1 and out["server_calls"] == 3  # the call that ended last answered another frame


def test_split_cores_pins_a_process_tree():
    assert split_cores({0, 1}) == ({0}, {1}) and split_cores({0, 1, 2, 3, 5}) == ({0, 1}, {2, 3, 5})
    with pytest.raises(ValueError, match="2 usable cores"):
        split_cores({3})
    cores = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = descendants(proc.pid)
        assert len(tree) == 3, tree  # sh and its two sleeps
        assert pin(proc.pid, {cores[-1]}) >= 3
        assert all(os.sched_getaffinity(p) == {cores[-1]} for p in tree)
        assert descendants(proc.pid, skip=proc.pid) == []
    finally:
        for p in reversed(descendants(proc.pid)):
            os.kill(p, signal.SIGTERM)
        proc.wait()


def test_app_fps_rejects_bad_camera_size_in_one_line(capsys):
    assert cli.main(["app-fps", "--camera-size", "big"]) == 2
    err = capsys.readouterr().err.strip()
    assert "WIDTHxHEIGHT" in err and "\n" not in err
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # one core: nothing to split
    try:
        assert cli.main(["app-fps", "--split-cores"]) == 2
    finally:
        os.sched_setaffinity(0, cores)
    assert "2 usable cores" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is missing: apt-get install chromium")
def test_webcam_tab_against_the_fake_camera(tmp_path, monkeypatch):
    """The real tab in Chromium, the app in this process writing its trace: rates, lag, the handler alone on the same
    frames, and the stages of the frames shown matched to the server's calls."""
    trace = tmp_path / "server.jsonl"
    monkeypatch.setattr(handlers, "WEBCAM_TRACE", str(trace))
    weights = boxy_weights(tmp_path / "weights", ("s1",))
    with serve(weights, tmp_path / "cache") as (_, url):
        report = run(["s1"], "pytorch", [160], seconds=3, camera_fps=10, camera_size=(320, 240), frames=40, url=url,
                     settle_s=1, handler_seconds=1, trace=trace, log=lambda _: None, screenshots=tmp_path / "shots")
    (result,) = report["results"]
    assert result["camera_fps_measured"] == pytest.approx(10, rel=0.3) and result["camera_size"] == "320x240", result
    assert result["frames_shown"] >= 2 and result["codes_read"] >= 1, result
    assert result["lag_frames"]["median"] is not None and result["lag_ms"]["median"] > 0, result
    assert 0 < result["share_of_camera"] <= 1.05 and report["machine"]["cpu"], result
    assert result["handler_fps"] > 0 and result["handler_alone"]["stages_ms"]["detect"] > 0, result
    stages = result["stages"]
    assert stages["matched_to_server"] >= 1 and stages["ms"]["detect"]["median"] > 0, stages
    assert stages["ms"]["message"]["median"] > 0 and stages["ms"]["show"]["median"] is not None, stages
    assert stages["ms"]["upload"]["median"] is not None, stages
    json.dumps(report)
    shot = Image.open(tmp_path / "shots" / "webcam_s1_pytorch_160.jpg")  # the tab: camera, detections, rates line
    assert shot.format == "JPEG" and 300 < shot.width <= 1280 and 200 < shot.height < 1000, shot.size
