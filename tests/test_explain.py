"""Why stars: the star swapped for a sum at inference, the 2D toy in the app, EigenCAM per model, and detections to
take away as CSV and JSON (supervision's sinks), through the handlers as Gradio calls them.

Weights are random-init with a "person" bias (``app_support.boxy_weights``) and images 320 px, so each call takes
well under a second or two on two cores.
"""

from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import supervision as sv
import torch
from app_support import BUS, boxy_weights, with_real_batchnorms, write_video
from PIL import Image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from starnet_demo import build_model
from starnet_demo.explain import cam, swap, toy
from starnet_demo.inference.detector import clear_detectors, get_detector
from starnet_demo.media.sinks import DetectionFiles
from starnet_demo.models.backbone import blocks
from starnet_demo.models.star import capture_star, swapped_to_sum
from starnet_demo.models.yolo import backbone
from starnet_demo.ui import handlers

SIZE = 320
CSV_COLUMNS = ["x_min", "y_min", "x_max", "y_max", "class_id", "confidence", "tracker_id", "class_name"]


pytestmark = pytest.mark.usefixtures("one_thread")  # as app.py runs each worker (conftest.py says why)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = boxy_weights(tmp_path_factory.mktemp("explain-weights"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STARNET_WEIGHTS_DIR", str(folder))
        clear_detectors()
        yield folder
        clear_detectors()


@pytest.fixture(scope="module")
def rgb():
    return np.asarray(Image.open(BUS).convert("RGB"))


@pytest.fixture(scope="module")
def small():
    return with_real_batchnorms("s050")


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _sum_forward(self, x):
    """timm's Block.forward with ``+`` for ``*``: what ``swapped_to_sum`` must reproduce."""
    shortcut = x
    x = self.dwconv(x)
    x = self.act(self.f1(x)) + self.f2(x)
    return shortcut + self.drop_path(self.dwconv2(self.g(x)))


# ---------------------------------------------------------------- the swap itself
@torch.no_grad()
def test_swapped_to_sum_is_the_sum_block_and_leaves_no_hooks(small):
    x = torch.rand(1, 3, 128, 128)
    p5 = lambda: backbone(small)(x)[-1]  # noqa: E731 (the stride-32 map: downstream of every block swapped here)
    as_trained = p5()
    chosen = ["1.0", "2.1"]
    with swapped_to_sum(small, reversed(chosen)) as keys:
        swapped, whole = p5(), small(x)[0]
    assert keys == chosen and _hooks(small) == 0
    every = blocks(backbone(small))
    for k in chosen:
        every[k].forward = types.MethodType(_sum_forward, every[k])
    try:
        by_hand, whole_by_hand = p5(), small(x)[0]
    finally:
        for k in chosen:
            del every[k].forward
    torch.testing.assert_close(swapped, by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole, whole_by_hand, rtol=0, atol=1e-4)
    assert (swapped - as_trained).abs().max() > 1e-3  # 100 times the tolerance above
    torch.testing.assert_close(p5(), as_trained, rtol=0, atol=0)  # nothing left behind


@torch.no_grad()
def test_maps_recorded_inside_the_swap_are_the_sum(small):
    x = torch.rand(1, 3, 96, 96)
    with swapped_to_sum(small, "2.1"):
        _, maps = capture_star(small, x, keys=["2.1", "2.0"])
    torch.testing.assert_close(maps["2.1"].star, maps["2.1"].act_f1 + maps["2.1"].f2)
    torch.testing.assert_close(maps["2.0"].star, maps["2.0"].act_f1 * maps["2.0"].f2)


def test_swap_refuses_unknown_blocks_and_removes_hooks_on_failure(small):
    with pytest.raises(ValueError, match="unknown block"), swapped_to_sum(small, ["9.9"]):
        pass
    with pytest.raises(RuntimeError), swapped_to_sum(small, ["0.0"]):
        small(torch.rand(1, 4, 64, 64))
    assert _hooks(small) == 0


def test_swap_scopes():
    s1 = swap.swap_keys
    assert s1("s1", "all") == swap.scope_choices("s1")[5:] and len(s1("s1", "all")) == 15
    assert s1("s1", "stage 2") == [f"2.{i}" for i in range(8)] and s1("s1", "Stage 0") == ["0.0", "0.1"]
    assert s1("s1", ["3.2", "stage 0", "3.2"]) == ["0.0", "0.1", "3.2"]
    assert swap.scope_choices("s4")[:5] == ["all", "stage 0", "stage 1", "stage 2", "stage 3"]
    for bad in ("stage 7", "9.9", "stage", "everything"):
        with pytest.raises(ValueError, match="cannot swap"):
            s1("s1", bad)
    with pytest.raises(ValueError, match="choose where"):
        s1("s1", [])


def test_unhurried_nms_lifts_the_time_limit_and_puts_it_back():
    from ultralytics.utils import nms

    original = nms.non_max_suppression
    with swap.unhurried_nms(7.0):
        assert nms.non_max_suppression.keywords == {"max_time_img": 7.0}
    assert nms.non_max_suppression is original


# ---------------------------------------------------------------- star vs sum on the detector
def test_star_pass_is_the_detectors_own_detection(weights, rgb):
    detector = get_detector("s1", "cpu", "pytorch", SIZE)
    r = swap.star_vs_sum(detector, rgb, "all", "2.7", imgsz=SIZE)
    detections, _ = detector.detect(rgb, imgsz=SIZE)
    assert len(r.star.detections) == len(detections) > 0
    np.testing.assert_allclose(r.star.detections.xyxy, detections.xyxy, atol=0.5)
    assert r.swapped == swap.swap_keys("s1", "all") and r.block == "2.7"
    assert r.picture.shape[:2] == (SIZE, 240) and r.star.maps.shape[1:] == (20, 16)
    torch.testing.assert_close(r.sum.maps.star, r.sum.maps.act_f1 + r.sum.maps.f2)
    assert 0 <= r.kept() <= len(r.star.detections)


def test_pytorch_holds_the_detector_lock(weights):
    detector = get_detector("s1", "cpu", "pytorch", SIZE)
    with detector.pytorch() as model:
        assert model is detector.model and detector._lock.locked()
    assert not detector._lock.locked()


def test_star_vs_sum_handler(weights):
    items, info = handlers.star_vs_sum(str(BUS), "s1", ["stage 2"], "2.7", SIZE)
    assert len(items) == 4 and all(img.dtype == np.uint8 and img.ndim == 3 for img, _ in items)
    assert items[0][0].shape == items[1][0].shape == np.asarray(Image.open(BUS)).shape
    assert "sum in stage 2" in items[1][1] and "act(f1(x)) + f2(x)" in items[3][1]
    assert info["swapped"] == [f"2.{i}" for i in range(8)] and info["block"] == "2.7"
    assert info["star"]["objects"] == len(info["star"]["detections"]) > 0 and "objects" in info["sum"]
    # a block after the swapped ones shows the product, fed by the sum upstream
    items, info = handlers.star_vs_sum(str(BUS), "s1", "stage 2", "3.0", SIZE)
    assert "the sum upstream" in items[3][1]


@pytest.mark.parametrize("args, message", [
    (("s1", "stage 9", "2.7"), "cannot swap 'stage 9'"),
    (("s1", "all", "9.9"), r"block '9\.9' is not in s1"),
    (("yolov8n", "all", "2.7"), "YOLOv8n has no star blocks"),
    (("s9", "all", "2.7"), "unknown variant"),
    (("s1", 3, "2.7"), "cannot swap '3'"),
])
def test_star_vs_sum_bad_input(weights, args, message):
    with pytest.raises(gr.Error, match=message):
        handlers.star_vs_sum(str(BUS), *args, SIZE)


def test_committed_star_vs_sum_figures_are_shown():
    table = handlers.star_vs_sum_measured()
    assert list(table.columns) == ["sum in", "blocks", "mAP50", "mAP50-95"]
    if swap.MEASURED.is_file():
        measured = json.loads(swap.MEASURED.read_text())
        assert measured["variant"] == "s1" and measured["images"] == 128
        assert [r["sum_in"] for r in measured["rows"]] == ["none", "stage 0", "stage 1", "stage 2", "stage 3", "all"]
        assert list(table["blocks"]) == [0, 2, 2, 8, 3, 15]


# ---------------------------------------------------------------- the toy
def test_star_toy_handler():
    figure, line, sweep, summary = handlers.star_toy("circles", 4.0, 1.0, 0.0)  # numbers as a Slider sends them
    assert figure.dtype == np.uint8 and figure.ndim == 3
    assert summary["width"] == 4 and summary["depth"] == 1 and 0 <= summary["star_test_acc"] <= 1
    assert "star" in line and "sum" in line and list(sweep.columns) == ["width", "fusion", "accuracy"]


@pytest.mark.parametrize("args, message", [
    (("squares", 4, 1), "unknown dataset 'squares'"),
    (("moons", 0, 1), "width must be a whole number from 1"),
    (("moons", 4.5, 1), "width must be a whole number"),
    (("moons", float("nan"), 1), "width must be a whole number"),
    (("moons", 4, 99), "depth must be a whole number from 1 to 6"),
    (("moons", 65, 1), "width must be a whole number from 1 to 64"),
    (("moons", 4, "two"), "depth must be a whole number"),
    (("moons", 4, 1, -1), "seed must be a whole number"),
])
def test_star_toy_bad_input(args, message):
    with pytest.raises(gr.Error, match=message):
        handlers.star_toy(*args)


def test_toy_sweep_reads_the_committed_cells(tmp_path, monkeypatch):
    (tmp_path / "toy.json").write_text(json.dumps({"cells": [
        {"dataset": "moons", "width": 4, "depth": 1, "star_acc": 0.9, "sum_acc": 0.8},
        {"dataset": "moons", "width": 4, "depth": 2, "star_acc": 0.7, "sum_acc": 0.6}]}))
    monkeypatch.setattr(toy, "MEASURED", tmp_path / "toy.json")
    monkeypatch.setattr(swap, "MEASURED", tmp_path / "star-vs-sum.json")
    assert handlers.toy_sweep("moons", 1).to_dict("records") == [
        {"width": 4, "fusion": "star", "accuracy": 0.9}, {"width": 4, "fusion": "sum", "accuracy": 0.8}]
    assert handlers.toy_sweep("circles", 1).empty
    assert handlers.star_vs_sum_measured().empty


# ---------------------------------------------------------------- EigenCAM
def test_first_component_is_grad_cams_projection_with_a_fixed_sign():
    a = np.random.default_rng(0).standard_normal((2, 8, 6, 5)).astype(np.float32)
    ours, theirs = cam.first_component(a), get_2d_projection(a)
    assert ours.shape == theirs.shape == (2, 6, 5)
    for o, t in zip(ours, theirs, strict=True):
        assert np.allclose(o, t, atol=1e-4) or np.allclose(o, -t, atol=1e-4)
        assert o.max() >= -o.min()


def test_target_layers_are_the_same_for_starnets_and_yolov8n(small):
    reference = build_model("yolov8n")
    for model in (small, reference):
        assert len(cam.target_layers(model, "neck")) == 3 and len(cam.target_layers(model, "sppf")) == 1
    with pytest.raises(ValueError, match="unknown layer"):
        cam.target_layers(small, "head")


@pytest.mark.parametrize("variant", ["s1", "yolov8n"])
def test_eigencam_covers_the_image_and_boxes_come_from_the_same_pass(weights, rgb, variant):
    detector = get_detector(variant, "cpu", "pytorch", SIZE)
    c = cam.eigencam(detector, rgb, "neck", imgsz=SIZE)
    detections, _ = detector.detect(rgb, imgsz=SIZE)
    assert c.heat.shape == rgb.shape[:2] and c.heat.min() == 0 and c.heat.max() == 1
    np.testing.assert_allclose(c.detections.xyxy, detections.xyxy, atol=0.5)
    assert _hooks(detector.model) == 0


def test_cam_handler(weights):
    shots, info = handlers.cam(str(BUS), ["s1", "yolov8n"], "sppf", SIZE)
    assert [caption.split(":")[0] for _, caption in shots] == ["StarNet-S1", "YOLOv8n (reference)"]
    assert all(img.shape == np.asarray(Image.open(BUS)).shape for img, _ in shots)
    assert info["layer"] == "sppf" and [m["variant"] for m in info["models"]] == ["s1", "yolov8n"]


@pytest.mark.parametrize("args, message", [
    ((["s1"], "head"), "unknown layer 'head'"),
    (([], "neck"), "at least one model"),
    ((["s9"], "neck"), "unknown variant"),
    ((7, "neck"), "variants must be a list"),
])
def test_cam_bad_input(weights, args, message):
    with pytest.raises(gr.Error, match=message):
        handlers.cam(str(BUS), *args, SIZE)


# ---------------------------------------------------------------- detections to take away
def test_image_downloads_hold_the_detections(weights):
    _, result, _, _, files = handlers.detect_image(str(BUS), "s1", "cpu", 0.25, 0.45, SIZE, runtime="pytorch")
    json_path, csv_path = files
    assert json_path.endswith("-detections.json") and csv_path.endswith("-detections.csv")
    rows = json.loads(Path(json_path).read_text())
    table = pd.read_csv(csv_path)
    assert list(table.columns) == CSV_COLUMNS and len(table) == len(rows) == len(result["detections"]) > 0
    assert [r["class_name"] for r in rows] == [d["class"] for d in result["detections"]]
    assert [[r["x_min"], r["y_min"], r["x_max"], r["y_max"]] for r in rows] == [d["box"] for d in result["detections"]]


def test_video_downloads_carry_frame_indices(weights, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=5)
    *_, (_, summary, _, (json_path, csv_path)) = handlers.detect_video_file(  # the generator's last value
        str(clip), "s1", "cpu", 0.25, 0.45, SIZE, track=True, runtime="pytorch")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*CSV_COLUMNS, "frame"]
    assert sorted({int(r["frame"]) for r in rows}) == list(range(summary["frames"]))
    assert all(r["tracker_id"] for r in rows)  # tracked: each row names its track
    assert len(json.loads(Path(json_path).read_text())) == len(rows)


def test_no_detections_still_give_a_table_and_a_failed_run_leaves_no_files(tmp_path):
    empty = sv.Detections(xyxy=np.zeros((0, 4), np.float32), confidence=np.zeros(0, np.float32),
                          class_id=np.zeros(0, int), data={"class_name": np.array([], dtype=object)})
    with DetectionFiles(tmp_path / "a.csv", tmp_path / "a.json") as sink:
        sink.append(empty)
    assert (tmp_path / "a.csv").read_text().strip() == ",".join(CSV_COLUMNS)
    assert json.loads((tmp_path / "a.json").read_text()) == []
    with pytest.raises(RuntimeError), DetectionFiles(tmp_path / "b.csv", tmp_path / "b.json") as sink:
        sink.append(empty)
        raise RuntimeError("decode failed")
    assert not list(tmp_path.glob("b.*"))
