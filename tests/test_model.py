"""YOLOv8-StarNet detectors: configs against YOLOv8n, building, fusing, checkpoints, and ultralytics' validator,
predictor and exporter (training is in test_train.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from ultralytics.nn.modules import SPPF, Conv, Detect, Index

from starnet_demo import BASELINE, VARIANTS, as_yolo, build_model
from starnet_demo.models.yolo import COCO_NAMES, backbone, forward_layers, init_from_teacher, variant_of
from starnet_demo.weights.files import load_weights, save_weights

# YOLOv8n's layers that feed its neck (P3 C2f 4, P4 C2f 6, P5 C2f 8) become our adapters; from SPPF (9) on, k -> k - 2.
TEACHER_TO_OURS = {4: 4, 6: 5, 8: 6}
NAMES = {0: "rectangle", 1: "ellipse"}  # the shapes_data fixture's classes


def _ours(teacher_index: int) -> int:
    if teacher_index == -1:
        return -1
    return TEACHER_TO_OURS.get(teacher_index, teacher_index - 2)


@pytest.fixture(scope="module")
def yolov8n():
    return build_model(BASELINE)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm trained-looking statistics and affine parameters, so folding them is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
    return model


def _assert_detections_close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Decoded outputs (B, 4 + nc, anchors): boxes within ``rel`` of the box scale, class scores within ``rel``."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape
    box_err = (got[:, :4] - want[:, :4]).abs().max().item()
    assert box_err <= rel * want[:, :4].abs().max().item(), box_err
    assert (got[:, 4:] - want[:, 4:]).abs().max().item() <= rel


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_neck_and_head_are_yolov8ns(variant, yolov8n):
    model = build_model(variant)
    assert variant_of(model) == variant
    assert model.stride.tolist() == [8.0, 16.0, 32.0]

    # Layers 7..20 are YOLOv8n's layers 9..22: same module types, same YAML args, same inputs, same tensor shapes.
    teacher_yaml = yolov8n.yaml["backbone"] + yolov8n.yaml["head"]
    our_yaml = model.yaml["backbone"] + model.yaml["head"]
    assert len(model.model) == 21 and len(yolov8n.model) == 23
    for k in range(7, 21):
        ours, theirs = model.model[k], yolov8n.model[k + 2]
        assert type(ours) is type(theirs), k
        assert our_yaml[k][1:] == teacher_yaml[k + 2][1:], k
        want_from = [_ours(f) for f in theirs.f] if isinstance(theirs.f, list) else _ours(theirs.f)
        assert ours.f == want_from, k
        assert {n: p.shape for n, p in ours.state_dict().items()} == {
            n: p.shape for n, p in theirs.state_dict().items()}, k
    assert isinstance(model.model[7], SPPF) and isinstance(model.model[20], Detect)

    # Index layers pick P3/P4/P5 with the variant's channels; 1x1 adapters map them to YOLOv8n's 64/128/256.
    channels = VARIANTS[variant].channels
    for i, (c_in, c_out) in enumerate(zip(channels, (64, 128, 256), strict=True)):
        index, adapter = model.model[1 + i], model.model[4 + i]
        assert isinstance(index, Index) and index.index == i and our_yaml[1 + i][3] == [c_in, i]
        assert isinstance(adapter, Conv) and adapter.f == 1 + i
        assert (adapter.conv.in_channels, adapter.conv.out_channels, adapter.conv.kernel_size) == (c_in, c_out, (1, 1))


def test_teacher_neck_and_head_copy_exactly(yolov8n):
    torch.manual_seed(1)
    teacher = _randomise_bn(build_model(BASELINE)).state_dict()
    model = build_model("s050")
    shared = [k for k in teacher if int(k.split(".")[1]) >= 9]
    assert init_from_teacher(model, teacher) == len(shared) == 205
    own = model.state_dict()
    for key in shared:
        parts = key.split(".")
        assert torch.equal(own[".".join([parts[0], str(int(parts[1]) - 2), *parts[2:]])], teacher[key]), key


def test_teacher_into_other_class_count_skips_only_class_branch():
    teacher = build_model(BASELINE).state_dict()
    model = build_model("s050", nc=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = init_from_teacher(model, teacher)
    cls_branch = [k for k in teacher if k.startswith("model.22.cv3.")]
    assert copied == 205 - len(cls_branch)
    own = model.state_dict()
    assert all(torch.equal(own[k], before[k]) for k in own if k.startswith("model.20.cv3."))
    assert torch.equal(own["model.20.cv2.0.0.conv.weight"], teacher["model.22.cv2.0.0.conv.weight"])


def test_teacher_with_wrong_layout_is_refused():
    teacher = build_model(BASELINE).state_dict()
    teacher["model.9.cv1.conv.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(ValueError, match="model.7.cv1.conv.weight"):
        init_from_teacher(build_model("s050"), teacher)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_build_model_with_own_classes(variant):
    model = build_model(variant, nc=3).eval()
    assert model.yaml["nc"] == 3 and model.model[-1].nc == 3
    assert model.names == {0: "0", 1: "1", 2: "2"}
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))[0]
    assert out.shape == (1, 4 + 3, 8 * 12 + 4 * 6 + 2 * 3)


def test_build_model_names_and_baseline():
    assert build_model("s050").names == COCO_NAMES and len(COCO_NAMES) == 80
    assert build_model("s050", nc=2, names=NAMES).names == NAMES
    baseline = build_model(BASELINE)
    assert variant_of(baseline) == BASELINE
    with pytest.raises(TypeError, match="StarNetBackbone"):
        backbone(baseline)


def test_forward_layers_are_the_layer_outputs():
    model = build_model("s050").eval()
    seen = {}
    handles = [model.model[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
               for i in (4, 5, 6)]
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        model(x)
        got = forward_layers(model, x, (4, 5, 6))
    for h in handles:
        h.remove()
    assert [g.shape[1] for g in got] == [64, 128, 256]
    assert all(torch.equal(g, seen[i]) for g, i in zip(got, (4, 5, 6), strict=True))


def test_fuse_folds_every_batchnorm(bus_tensor):
    model = _randomise_bn(build_model("s050", nc=2)).eval()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone(model).modules()) > 10
    with torch.no_grad():
        unfused = model(bus_tensor)[0]
        model.fuse()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        fused = model(bus_tensor)[0]
    _assert_detections_close(fused, unfused, rel=1e-4)


def test_checkpoint_round_trip(tmp_path, bus_tensor):
    torch.manual_seed(2)
    model = _randomise_bn(build_model("s050", nc=2, names=NAMES), seed=2).eval()
    config_path = save_weights(model, tmp_path, dtype=torch.float32)
    loaded, config = load_weights(config_path)
    assert (config["variant"], config["nc"], config["dtype"]) == ("s050", 2, "float32")
    assert loaded.names == NAMES and not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(loaded(bus_tensor)[0], model(bus_tensor)[0])


def test_checkpoint_fp16_is_the_rounded_model(tmp_path):
    model = build_model("s050", nc=2)
    loaded, config = load_weights(save_weights(model, tmp_path))
    assert config["dtype"] == "float16"
    for key, value in model.state_dict().items():
        want = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], want), key


def test_onnx_export_matches_pytorch(tmp_path, monkeypatch, bus_tensor):
    monkeypatch.chdir(tmp_path)  # ultralytics writes a YAML-built model's export to the working directory
    torch.manual_seed(4)
    model = _randomise_bn(build_model("s050", nc=2, names=NAMES), seed=4).eval()
    with torch.no_grad():
        want = model(bus_tensor)[0]
    onnx_path = as_yolo(model).export(format="onnx", imgsz=256, device="cpu", verbose=False)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: bus_tensor.numpy()})
    _assert_detections_close(torch.from_numpy(got), want, rel=1e-3)


def test_val_and_predict_through_ultralytics(tmp_path, shapes_data):
    model = build_model("s050", nc=2, names=NAMES)
    metrics = as_yolo(model).val(data=str(shapes_data), imgsz=160, batch=8, workers=0, device="cpu", plots=False,
                                 project=str(tmp_path), name="val", verbose=False)
    assert set(metrics.results_dict) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}
    assert all(0.0 <= v <= 1.0 for v in metrics.results_dict.values())
    assert metrics.names == NAMES

    images = sorted((shapes_data.parent / "images" / "train").glob("*.png"))[:2]
    results = as_yolo(model).predict([str(p) for p in images], imgsz=160, conf=0.001, device="cpu", verbose=False)
    assert len(results) == 2
    for result in results:
        assert result.orig_shape == (160, 160) and result.names == NAMES
        assert len(result.boxes) > 0  # conf 0.001 keeps some of a random model's guesses
        assert set(result.boxes.cls.int().tolist()) <= {0, 1}
        xyxy = result.boxes.xyxy
        assert (xyxy[:, 2:] >= xyxy[:, :2]).all() and xyxy.min() >= 0 and xyxy.max() <= 160


def test_ultralytics_keeps_the_process_torch_threads(tmp_path, monkeypatch, shapes_data):
    """Ultralytics' select_device would leave torch at min(8, cores - 1) threads after a predict, val or export."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(os.cpu_count() + 1)  # never ultralytics' choice, on any machine
        yolo = as_yolo(build_model("s050", nc=2, names=NAMES))
        during = []
        yolo.add_callback("on_val_batch_start", lambda _: during.append(torch.get_num_threads()))
        yolo.add_callback("on_predict_batch_start", lambda _: during.append(torch.get_num_threads()))
        yolo.val(data=str(shapes_data), imgsz=160, batch=8, workers=0, device="cpu", plots=False,
                 project=str(tmp_path), name="val", verbose=False)
        yolo.predict(np.zeros((160, 160, 3), np.uint8), imgsz=160, device="cpu", verbose=False)
        yolo.export(format="onnx", imgsz=64, device="cpu", verbose=False)
        assert during and set(during) == {os.cpu_count() + 1}
        assert torch.get_num_threads() == os.cpu_count() + 1
    finally:
        torch.set_num_threads(threads)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "starnet_demo", *args], capture_output=True, text=True, timeout=300)


def test_cli_info_lists_every_variant():
    done = _cli("info")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        name, backbone_m, detector_m, gflops = line.split()
        rows[name] = (float(backbone_m.rstrip("M")), float(detector_m.rstrip("M")), float(gflops))
    assert list(rows) == [*VARIANTS, BASELINE]
    assert "640" in done.stdout.splitlines()[0]
    for name, (backbone_m, detector_m, gflops) in rows.items():
        assert 0 < backbone_m < detector_m and gflops > 0, name
    assert [rows[v][1] for v in ("s1", "s2", "s3", "s4")] == sorted(rows[v][1] for v in ("s1", "s2", "s3", "s4"))


def test_cli_bad_variant_is_one_line_on_stderr():
    done = _cli("info", "--variants", "s9")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "s9" in lines[0], done.stderr
    assert not done.stdout and "Traceback" not in done.stderr
