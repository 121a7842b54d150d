"""``app-fps``: the camera clip carries readable frame indices, the page log is summarised into rates and lags, and the
tool measures the real Webcam tab in headless Chromium (skipped where ``/usr/bin/chromium`` is missing)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from app_support import boxy_weights, serve

from starnet_demo import cli
from starnet_demo.tools.appfps import CHROMIUM, read_code, run, summarise, write_y4m


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
    """A 20 FPS camera; the app returns every frame twice at 20 FPS, 3 camera frames behind: 10 new frames/s."""
    camera = [i * 50.0 for i in range(201)]
    frames = [{"t": i * 50.0, "camera": (i // 2 * 2 + 3) % 64, "annotated": (i // 2 * 2) % 64} for i in range(201)]
    frames[10]["annotated"] = None  # an unread code is skipped, not counted as a repeat
    s = summarise(frames, camera, loop=64, declared_fps=20, seconds=10)
    assert s["camera_fps_measured"] == pytest.approx(20) and s["fps"] == pytest.approx(20)
    assert s["new_fps"] == pytest.approx(10, rel=0.05) and s["share_of_camera"] == pytest.approx(0.5, rel=0.05)
    assert s["lag_frames"]["median"] == 3 and s["lag_ms"]["median"] == pytest.approx(150)
    assert s["camera_frames_per_new_frame"]["median"] == 2 and s["codes_read"] == 200


def test_app_fps_rejects_bad_camera_size_in_one_line(capsys):
    assert cli.main(["app-fps", "--camera-size", "big"]) == 2
    err = capsys.readouterr().err.strip()
    assert "WIDTHxHEIGHT" in err and "\n" not in err


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is missing: apt-get install chromium")
def test_webcam_tab_against_the_fake_camera(tmp_path):
    weights = boxy_weights(tmp_path / "weights", ("s1",))
    with serve(weights, tmp_path / "cache") as (_, url):
        report = run(["s1"], "pytorch", [160], seconds=3, camera_fps=10, camera_size=(320, 240), frames=40, url=url,
                     settle_s=1, log=lambda _: None)
    (result,) = report["results"]
    assert result["camera_fps_measured"] == pytest.approx(10, rel=0.3) and result["camera_size"] == "320x240", result
    assert result["frames_back"] >= 2 and result["codes_read"] >= 1, result
    assert result["lag_frames"]["median"] is not None, result
    assert 0 < result["share_of_camera"] <= 1.05 and report["machine"]["cpu"], result
    json.dumps(report)
