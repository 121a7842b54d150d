"""``python -m starnet_demo detect`` on a folder holding photos, a short video and a broken file, plus a path that does
not exist: every good source is annotated and tabled, every bad one is told in one line, and the run says so at the
end with exit 1."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from starnet_demo.cli import main

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 5
FAST = ["--runtime", "pytorch", "--imgsz", "320"]  # no export to wait for; the detector is the app's all the same


def cut_clip(source: Path, target: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` as an H.264 mp4, with PyAV."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = src.streams.video[0]
        encoder = out.add_stream("libx264", rate=10)
        encoder.width, encoder.height, encoder.pix_fmt = stream.codec_context.width, stream.codec_context.height, \
            "yuv420p"
        for i, frame in enumerate(src.decode(stream)):
            if i == frames:
                break
            out.mux(encoder.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(encoder.encode())
    return target


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(ROOT / "examples" / name, folder / name)
    cut_clip(ROOT / "examples" / "vtest.mp4", folder / "clip.mp4", FRAMES)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (folder / "notes.txt").write_text("not media: a folder's other files are left alone")
    return folder


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_a_folder_with_a_broken_file_and_a_missing_path(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(sources), str(tmp_path / "missing.jpg"), "--out", str(out), *FAST]) == 1
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2
    assert any("missing.jpg: no such file or folder" in line for line in skipped)
    assert any("broken.jpg" in line and "could not be decoded" in line for line in skipped)
    assert "2 image(s) and 1 video(s)" in captured.out and "2 source(s) skipped" in captured.out

    assert sorted(p.name for p in out.iterdir()) == ["bus.jpg", "clip.mp4", "detections.csv", "detections.json",
                                                      "zidane.jpg"]
    for name in ("bus.jpg", "zidane.jpg"):
        with Image.open(out / name) as annotated, Image.open(sources / name) as original:
            assert annotated.size == original.size
            assert not np.array_equal(np.asarray(annotated), np.asarray(original))  # boxes were drawn
    video = frames_of(out / "clip.mp4")
    assert len(video) == FRAMES and video[0].shape == frames_of(sources / "clip.mp4")[0].shape

    rows = list(csv.DictReader((out / "detections.csv").open()))
    assert {r["source"] for r in rows} == {"bus.jpg", "zidane.jpg", "clip.mp4"}
    assert {int(r["frame"]) for r in rows if r["source"] == "clip.mp4"} <= set(range(FRAMES))
    assert {r["class_name"] for r in rows if r["source"] == "bus.jpg"} >= {"bus", "person"}
    assert len(json.loads((out / "detections.json").read_text())) == len(rows)


def test_a_glob_with_a_class_filter_succeeds(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(sources / "*.jpg"), "--classes", "person", "--out", str(out), *FAST]) == 1  # broken
    rows = list(csv.DictReader((out / "detections.csv").open()))
    assert rows and {r["class_name"] for r in rows} == {"person"}
    capsys.readouterr()
    assert main(["detect", str(sources / "b*s.jpg"), str(sources / "bus.jpg"), "--out", str(out / "one"), *FAST]) == 0
    assert sorted(p.name for p in (out / "one").iterdir()) == ["bus.jpg", "detections.csv", "detections.json"]
    assert "1 image(s) and 0 video(s)" in capsys.readouterr().out


def test_an_unknown_class_or_device_is_a_bad_argument(sources, tmp_path, capsys):
    assert main(["detect", str(sources / "bus.jpg"), "--classes", "unicorn", "--out", str(tmp_path), *FAST]) == 2
    assert "unknown class(es) ['unicorn']" in capsys.readouterr().err
    assert main(["detect", str(sources / "bus.jpg"), "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
