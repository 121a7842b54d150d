"""The video pipeline: every frame decoded, detected, annotated and encoded to H.264, each stage timed."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch
from app_support import write_video
from ultralytics.utils import ASSETS

from starnet_demo.inference.detector import Detector
from starnet_demo.inference.pipeline import run_video
from starnet_demo.media.video import VideoError
from starnet_demo.models.yolo import build_model
from starnet_demo.viz.annotate import DetectionAnnotator
from starnet_demo.weights.files import save_weights

FRAMES = 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 12-frame 4:3 H.264 clip of bus.jpg panning."""
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    image = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (320, 240))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(FRAMES):
            frame = np.ascontiguousarray(np.roll(image, 8 * i, axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_weights(build_model("s050"), folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STARNET_WEIGHTS_DIR", str(folder))
        yield Detector("s050", "cpu", "pytorch", 128)


def test_every_frame_goes_through_and_out_as_h264(clip, detector, tmp_path):
    seen, fractions = [], []
    target = tmp_path / "out.mp4"
    stats = run_video(detector, clip, target, conf=0.001, annotate=DetectionAnnotator(rgb=False).annotate,
                      on_detections=lambda d, i: seen.append(i) or d,
                      progress=lambda f, desc: fractions.append(f))
    assert stats.frames == FRAMES and seen == list(range(FRAMES))
    assert fractions and 0 < fractions[-1] <= 1
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        assert sum(1 for _ in container.decode(stream)) == FRAMES
    summary = stats.summary()
    for stage in ("decode", "preprocess", "inference", "postprocess", "annotate", "encode"):
        assert len(stats.stage_ms[stage]) == FRAMES and summary[f"video_{stage}_ms"] > 0, stage
    assert summary["video_frames"] == FRAMES and summary["video_fps"] > 0 and summary["video_size"] == "320x240"


def test_max_frames_and_no_target(clip, detector):
    stats = run_video(detector, clip, None, max_frames=5)
    assert stats.frames == 5 and len(stats.stage_ms["inference"]) == 5


@pytest.mark.parametrize(("content", "message"), [(b"", "bad.mp4 is empty"),
                                                   (b"not a video at all" * 100, "not a video that can be read")])
def test_not_a_video_is_a_video_error(detector, tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message):
        run_video(detector, path, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_video_keeps_what_decodes(detector, tmp_path):
    """An mp4 with its index first (faststart) that breaks off in its ninth frame: the frames before come through."""
    whole = write_video(tmp_path / "whole.mp4", frames=FRAMES, faststart=True)
    with av.open(str(whole)) as c:
        ninth = [p.pos for p in c.demux(video=0) if p.size][8]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:ninth + 10])
    stats = run_video(detector, cut, tmp_path / "out.mp4")
    assert 0 < stats.frames < FRAMES  # the decoder holds back a few frames it cannot finish
