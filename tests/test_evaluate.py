"""The eval command on real weights: ultralytics' validator figures, their bootstrap standard errors, the JSON file
and what ``--record`` stores in the weights' config and model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import DEFAULT_CFG

from starnet_demo.cli import main
from starnet_demo.models.yolo import as_yolo
from starnet_demo.tools.bench import bench
from starnet_demo.tools.publish import model_card
from starnet_demo.training.data import held_out_view
from starnet_demo.training.evaluate import images_map
from starnet_demo.weights.files import load_weights, read_config, sha256_file

ROOT = Path(__file__).resolve().parent.parent
IMGSZ = 320


@pytest.fixture(scope="module")
def self_labelled(tmp_path_factory) -> Path:
    """The example photos, labelled with S1's own confident detections, every second image's boxes moved off their
    objects: figures well above 0 and below 1, which differ between images, so resampling them moves the mAP."""
    root = tmp_path_factory.mktemp("self-labelled")
    images, labels = root / "images" / "val", root / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    model, config = load_weights(ROOT / "weights" / "s1.json")
    photos = sorted(p for p in (ROOT / "examples").glob("*.jpg"))
    for i, result in enumerate(as_yolo(model).predict([str(p) for p in photos], imgsz=IMGSZ, conf=0.3,
                                                      verbose=False)):
        xywhn = result.boxes.xywhn.numpy()
        if i % 2:
            xywhn[:, :2] = (xywhn[:, :2] + 0.5) % 1  # the same boxes, elsewhere
        rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
                for c, (x, y, w, h) in zip(result.boxes.cls, xywhn, strict=True)]
        shutil.copy(photos[i], images / photos[i].name)
        (labels / f"{photos[i].stem}.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"val": str(images), "train": str(images),
                                                    "names": dict(enumerate(config["names"]))}))
    return root / "data.yaml"


def test_eval_writes_the_figures_with_their_standard_errors_and_records_them(self_labelled, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(ROOT / "weights", weights, ignore=shutil.ignore_patterns("s2*", "s3*", "s4*"))
    out = tmp_path / "eval.json"
    assert main(["eval", "--variant", "s1", "--weights", str(weights), "--data", str(self_labelled), "--imgsz",
                 str(IMGSZ), "--out", str(out), "--bootstrap", "200", "--record", "self-labelled",
                 "--teacher-map50", "0.5"]) == 0
    result = json.loads(out.read_text())
    assert result["variant"] == "s1" and result["images"] == len(list((ROOT / "examples").glob("*.jpg")))
    assert (result["imgsz"], result["batch"]) == (IMGSZ, 16)
    assert result["weights_sha256"] == sha256_file(weights / "s1.safetensors")
    assert 0.2 < result["map50"] < 0.95 and 0 < result["map50_95"] <= result["map50"]
    assert 0 < result["map50_se"] < 0.5 and 0 < result["map50_95_se"] < 0.5
    assert {"person", "bus"} <= set(result["per_class"]) and set(result["speed_ms"]) >= {"inference"}
    assert not list(self_labelled.parent.rglob("*.cache"))  # ultralytics' label cache went to a temporary view
    metrics = read_config(weights / "s1.json")["metrics"]
    assert metrics == {"data": "self-labelled", "teacher_map50": 0.5, **{k: result[k] for k in (
        "map50", "map50_se", "map50_95", "map50_95_se", "precision", "recall", "images", "imgsz", "batch", "device")}}
    card = str(model_card({"s1": read_config(weights / "s1.json")}))
    assert "| variant | mAP50 | mAP50 s.e. | mAP50-95 | mAP50-95 s.e. |" in card
    assert f"| s1 | {result['map50']:.4g} | {result['map50_se']:.4g} |" in card


def test_images_map_reproduces_ultralytics_and_moves_with_the_draw():
    rng = np.random.default_rng(0)

    def image(hit: bool) -> dict[str, np.ndarray]:
        """One object of class 0 and one detection of it, right or wrong at every IoU threshold."""
        return {"tp": np.full((1, 10), hit), "conf": rng.random(1), "pred_cls": np.zeros(1),
                "target_cls": np.zeros(1)}

    images = [image(True), image(True), image(False), image(False)]
    assert images_map(images, [0, 1]) == (pytest.approx(1.0, abs=0.01), pytest.approx(1.0, abs=0.01))
    assert images_map(images, [2, 3]) == (0.0, 0.0)
    assert 0 < images_map(images)[0] < 1


def test_eval_against_other_weights_gives_the_paired_difference(self_labelled, tmp_path):
    common = ["eval", "--variant", "s1", "--weights", str(ROOT / "weights"), "--data", str(self_labelled), "--imgsz",
              str(IMGSZ), "--bootstrap", "100"]
    assert main([*common, "--against", str(ROOT / "weights" / "s2.json"), "--out", str(tmp_path / "s2.json")]) == 0
    result = json.loads((tmp_path / "s2.json").read_text())
    other = result["against"]
    assert other["variant"] == "s2" and other["weights_sha256"] == sha256_file(ROOT / "weights" / "s2.safetensors")
    assert other["map50_difference"] == pytest.approx(result["map50"] - other["map50"], abs=2e-5)
    assert other["map50_95_difference"] == pytest.approx(result["map50_95"] - other["map50_95"], abs=2e-5)
    assert other["map50_difference_se"] > 0 and other["map50_95_difference_se"] > 0
    # Against itself, every resampling gives the same figures to both.
    assert main([*common, "--against", str(ROOT / "weights"), "--out", str(tmp_path / "self.json")]) == 0
    same = json.loads((tmp_path / "self.json").read_text())["against"]
    assert [same[k] for k in ("map50_difference", "map50_difference_se", "map50_95_difference_se")] == [0, 0, 0]


def test_eval_against_missing_weights_is_one_line(self_labelled, tmp_path, capsys):
    assert main(["eval", "--variant", "s1", "--weights", str(ROOT / "weights"), "--data", str(self_labelled),
                 "--against", str(tmp_path / "nowhere.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("layout", ["images-and-labels", "labels-beside-images"])
def test_held_out_view_finds_the_labels_and_writes_nothing_into_the_dataset(self_labelled, tmp_path, layout):
    root, data = self_labelled.parent, self_labelled
    labels = root / "labels" / "val"
    if layout == "labels-beside-images":
        flat = tmp_path / "flat"
        shutil.copytree(root / "images" / "val", flat)
        for label in labels.iterdir():
            shutil.copy(label, flat)
        data = tmp_path / "flat.yaml"
        names = yaml.safe_load(self_labelled.read_text())["names"]
        data.write_text(yaml.safe_dump({"train": str(flat), "val": str(flat), "names": names}))
        root = labels = flat
    with held_out_view(data) as view:
        checked = check_det_dataset(view)
        dataset = YOLODataset(img_path=checked["val"], imgsz=64, augment=False, data=checked, hyp=DEFAULT_CFG)
        expected = [len((labels / f"{Path(f).stem}.txt").read_text().split()) // 5 for f in dataset.im_files]
        assert [len(x["cls"]) for x in dataset.labels] == expected and sum(expected) > 0
        assert len(list(Path(view).parent.rglob("*.cache"))) == 1
    assert not Path(view).exists() and not list(root.rglob("*.cache"))


def test_bench_accuracy_guard_measures_a_runtime_against_pytorch(self_labelled, tmp_path, monkeypatch):
    """``bench --accuracy`` with no PyTorch record to compare with: ONNX Runtime fp32 against PyTorch fp32, measured
    for the guard, on the same held-out images; nothing written into the dataset."""
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path / "exports"))
    records = bench(["s1"], runtimes=["onnxruntime"], imgsz=IMGSZ, runs=1, warmup=0, accuracy=self_labelled,
                    log=lambda _: None)
    s1 = next(r for r in records if r["variant"] == "s1")
    assert s1["accuracy_data"] == str(self_labelled) and 0 < s1["map50_95_reference"] <= 1
    assert abs(s1["map50_95_delta"]) < 0.005 and s1["accuracy_ok"]
    assert not list(self_labelled.parent.rglob("*.cache"))


def test_bench_guards_int8_as_it_guards_bf16(self_labelled, tmp_path, monkeypatch):
    """An int8 record gets the same held-out check against PyTorch fp32, and names its recipe, so that
    ``int8.int8_verdict`` counts it only for that recipe and these weights."""
    from starnet_demo.inference.int8 import INT8, int8_unavailable_reason

    if int8_unavailable_reason():
        pytest.skip(int8_unavailable_reason())
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    image = cv2.imread(str(ROOT / "examples" / "bus.jpg"))
    for i in range(3):  # crops, not the evaluation images themselves
        cv2.imwrite(str(calibration / f"crop_{i}.jpg"), image[i * 100: i * 100 + 400, i * 150: i * 150 + 500])
    monkeypatch.setenv("STARNET_CALIBRATION_DIR", str(calibration))
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path / "exports"))
    records = bench(["s1"], runtimes=["openvino"], imgsz=IMGSZ, runs=1, warmup=0, precision_choice="int8",
                    accuracy=self_labelled, log=lambda _: None)
    s1 = next(r for r in records if r["variant"] == "s1")
    assert s1["precision"] == "int8" and s1["int8_recipe"] == INT8.id and "error" not in s1
    assert 0 < s1["map50_95_reference"] <= 1 and s1["accuracy_ok"] == (s1["map50_95_delta"] >= -0.005)
