"""The app's named API endpoints, driven with gradio_client against ``app.py`` served on 127.0.0.1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import pytest
from app_support import BUS, boxy_weights, serve, write_video
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError


@pytest.fixture(scope="module")
def client(tmp_path_factory, one_thread):
    """The app in this process, on one intra-op thread per worker as ``app.py`` runs it."""
    weights = boxy_weights(tmp_path_factory.mktemp("client-weights"))
    with serve(weights, tmp_path_factory.mktemp("examples-cache")) as (_, url):
        yield Client(url, verbose=False)


def test_endpoints_are_named_and_documented(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/detect_image", "/detect_video", "/latency", "/star_maps", "/star_vs_sum", "/star_toy", "/cam"} <= set(api)
    names = [p["parameter_name"] for p in api["/detect_image"]["parameters"]]
    assert names[:6] == ["image", "variant", "device", "conf", "iou", "imgsz"]


def test_detect_image(client):
    image, result, table, line, _ = client.predict(handle_file(str(BUS)), "s1", "cpu", 0.25, 0.45, 320,
                                                   api_name="/detect_image")
    assert image.endswith(".webp") and result["variant"] == "s1" and result["device"] == "cpu"
    dets = result["detections"]
    assert dets and all({"class", "confidence", "box"} <= set(d) for d in dets)
    assert dets[0]["class"] == "person" and len(dets[0]["box"]) == 4
    assert len(table["data"]) == len(dets) and "object" in line


def test_bad_image_is_a_clear_error_and_the_server_carries_on(client, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not a picture")
    with pytest.raises(AppError, match="photo.jpg is not an image"):
        client.predict(handle_file(str(bad)), "s1", "cpu", 0.25, 0.45, 320, api_name="/detect_image")
    with pytest.raises(AppError, match="unknown variant"):
        client.predict(handle_file(str(BUS)), "s7", "cpu", 0.25, 0.45, 320, api_name="/detect_image")
    assert client.predict(handle_file(str(BUS)), "s1", "cpu", 0.25, 0.45, 320, api_name="/detect_image")[1]


def test_detect_video(client, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=5)
    video, summary, counts, _ = client.predict(handle_file(str(clip)), "s1", "cpu", 0.25, 0.45, 320, True,
                                               api_name="/detect_video")
    with av.open(video) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert summary["frames"] == 5 and summary["tracked"]
    assert counts["headers"] == ["class", "max_in_frame", "frames", "tracks"]


def test_latency(client):
    table, plot, _, gallery, results = client.predict(handle_file(str(BUS)), ["s1"], "cpu", 320, 1, False,
                                                      api_name="/latency")
    assert [row[0] for row in table["data"]] == ["StarNet-S1"] and len(plot["data"]) == 3
    assert len(gallery) == 1 and [r["variant"] for r in results] == ["s1"]
    assert all(r["params"] > 0 and r["gflops"] > 0 and r["inference_ms"] > 0 for r in results)


def test_star_maps(client):
    gallery, info = client.predict(handle_file(str(BUS)), "s1", "1.1", 320, 1, "cpu", api_name="/star_maps")
    assert len(gallery) == 1 + 3 * 2 and all(item["image"] for item in gallery)
    assert info["block"] == "1.1" and info["shape_chw"][1:] == [40, 30]  # stride 8 at 320 px, without the padding


CSV_COLUMNS = ["x_min", "y_min", "x_max", "y_max", "class_id", "confidence", "tracker_id", "class_name"]


def test_image_detections_download_as_json_and_csv(client):
    _, result, *_, files = client.predict(handle_file(str(BUS)), "s1", "cpu", 0.25, 0.45, 320,
                                          api_name="/detect_image")
    json_file, csv_file = sorted(files, key=lambda f: Path(f).suffix != ".json")
    rows = json.loads(Path(json_file).read_text())
    with open(csv_file) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CSV_COLUMNS and len(table) == len(rows) == len(result["detections"]) > 0
    assert [r["class_name"] for r in rows] == [r["class_name"] for r in table] == ["person"] * len(rows)


def test_video_detections_download_per_frame(client, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=4)
    *_, summary, _, files = client.predict(handle_file(str(clip)), "s1", "cpu", 0.25, 0.45, 320, False,
                                           api_name="/detect_video")
    json_file, csv_file = sorted(files, key=lambda f: Path(f).suffix != ".json")
    with open(csv_file) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == [*CSV_COLUMNS, "frame"]
    assert sorted({int(r["frame"]) for r in table}) == list(range(summary["frames"])) == [0, 1, 2, 3]
    assert [r["frame"] for r in json.loads(Path(json_file).read_text())] == [int(r["frame"]) for r in table]


def test_star_vs_sum(client):
    gallery, info = client.predict(handle_file(str(BUS)), "s1", ["stage 3"], "3.2", 320, 0.25, 0.45, "cpu",
                                   api_name="/star_vs_sum")
    assert len(gallery) == 4 and all(item["image"] for item in gallery)
    assert info["swapped"] == ["3.0", "3.1", "3.2"] and {"star", "sum", "kept"} <= set(info)


def test_star_toy(client):
    figure, line, sweep, summary = client.predict("moons", 4, 1, 0, api_name="/star_toy")
    assert Path(figure).is_file() and "star" in line and summary["dataset"] == "moons"
    assert {"star_test_acc", "sum_test_acc", "params"} <= set(summary)


def test_cam(client):
    gallery, info = client.predict(handle_file(str(BUS)), ["s1", "yolov8n"], "neck", 320, 0.25, 0.45, "cpu",
                                   api_name="/cam")
    assert len(gallery) == 2 and [m["variant"] for m in info["models"]] == ["s1", "yolov8n"]
    with pytest.raises(AppError, match="unknown layer"):
        client.predict(handle_file(str(BUS)), ["s1"], "logits", 320, 0.25, 0.45, "cpu", api_name="/cam")
