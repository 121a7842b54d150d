"""The GPU training bundle, run on the CPU: a bug in it must never cost device minutes.

A tiny ``../shared`` is made from the fixtures' shapes images (under COCO's 80 class names, as the real pools are),
bundled with one hand-made wheel, and the bundle's ``run.sh`` runs end to end as on the GPU machine: the offline
install, one variant trained for the whole epochs that fit its budget, the held-out evaluation paired against its
start, the returned files, and the app's own path loading the result as a variant.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import pytest
import yaml

from starnet_demo.inference.detector import clear_detectors, get_detector
from starnet_demo.models.yolo import COCO_NAMES
from starnet_demo.training.bundle import build_bundle
from starnet_demo.training.gpu_run import parse_plan
from starnet_demo.weights.files import load_weights, save_weights

REPO = Path(__file__).resolve().parents[1]


def _shared(root: Path, shapes: Path) -> Path:
    """``root/datasets`` laid out as ``../shared``: coco-mini (train + held-out val) and one distill pool."""
    source = sorted((shapes.parent / "images" / "train").glob("*.png"))
    names = COCO_NAMES
    splits = {("coco-mini", "train"): source[:3], ("coco-mini", "val"): source[3:5], ("distill", "train"): source[5:]}
    for (pool, split), images in splits.items():
        for image in images:
            for kind, suffix in (("images", image.suffix), ("labels", ".txt")):
                src = image.parent.parent.parent / kind / "train" / f"{image.stem}{suffix}"
                dst = root / "datasets" / pool / kind / split / f"{pool}-{split}-{image.stem}{suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    (root / "datasets" / "coco-mini" / "data.yaml").write_text(yaml.safe_dump({"names": names}))
    return root


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so the offline install runs for real without the network."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "starnet_probe-1.0-py3-none-any.whl"
    info = "starnet_probe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("starnet_probe.py", "INSTALLED = True\n")
        # The GPU machine has no polars: installed first on the path, this one fails any import of it.
        z.writestr("polars/__init__.py", "raise ImportError('polars is not on the GPU machine')\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: starnet-probe\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return folder


def test_the_tracked_tree_leaves_the_bundle_its_room():
    """At most 40 MiB tracked (issue 33), so that a 64 MiB trip to a lent GPU carries about 23 MiB of training images;
    a new large file must make room or go to the Hub."""
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.decode()
    size = sum(p.stat().st_size for f in files.split("\0") if f and (p := root / f).is_file())
    assert 20 * 2**20 < size <= 40 * 2**20, f"the tracked tree is {size / 2**20:.2f} MiB"


def test_plan_parses_minutes_per_variant():
    assert parse_plan("s3:2.5, s4:3,s1") == [("s3", 2.5), ("s4", 3.0), ("s1", 1.0)]


def test_bundle_holds_out_val_and_fits_its_room(shapes_data, tmp_path):
    shared = _shared(tmp_path / "shared", shapes_data)
    manifest = build_bundle(shared, tmp_path / "bundle", repo=tmp_path, wheels=_wheel(tmp_path / "wheels"),
                            max_bytes=40_000, long_side=96)
    data = yaml.safe_load((tmp_path / "bundle" / "data" / "data.yaml").read_text())
    assert data["val"] == "heldout/images/val" and "path" not in data
    val = {p.stem for p in (tmp_path / "bundle" / "data" / "heldout" / "images" / "val").iterdir()}
    train = {p.stem for folder in data["train"] for p in (tmp_path / "bundle" / "data" / folder).iterdir()}
    assert len(val) == 2 and not val & train
    assert manifest["bytes"] <= 40_000 and manifest["images"]["train_total"] == len(train) >= 1
    assert all(max(cv2.imread(str(p)).shape[:2]) <= 96
               for folder in data["train"] for p in (tmp_path / "bundle" / "data" / folder).iterdir())


def test_bundle_refuses_a_training_image_that_is_held_out(shapes_data, tmp_path):
    shared = _shared(tmp_path / "shared", shapes_data)
    val = next((shared / "datasets" / "coco-mini" / "images" / "val").iterdir())
    shutil.copyfile(val, shared / "datasets" / "distill" / "images" / "train" / val.name)
    with pytest.raises(ValueError, match="held-out"):
        build_bundle(shared, tmp_path / "bundle", repo=tmp_path, wheels=_wheel(tmp_path / "wheels"),
                     max_bytes=10**6)


def test_run_script_trains_evaluates_and_returns_weights_the_app_loads(shapes_data, teacher_file, random_weights,
                                                                       tmp_path, monkeypatch):
    shared = _shared(tmp_path / "shared", shapes_data)
    bundle = tmp_path / "bundle"
    build_bundle(shared, bundle, repo=tmp_path, wheels=_wheel(tmp_path / "wheels"), max_bytes=10**6, long_side=128,
                 val_long_side=128)
    start = tmp_path / "start"  # packed as S2 and S3 are: the returned weights must be stored the same way
    save_weights(load_weights(random_weights(["s050"]) / "s050.json")[0], start, int8=r"^model\.0\.")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "SITE": str(tmp_path / "site"), "PYTHON": sys.executable,
           "STARNET_WEIGHTS_DIR": str(start)}
    command = ["bash", str(bundle / "run.sh"), "--plan", "s050:0.25", "--weights", str(start), "--teacher",
               str(teacher_file), "--device", "cpu", "--imgsz", "64", "--batch", "2", "--workers", "0", "--cache",
               "", "--bootstrap", "20", "--no-latency", "--smoke-runtimes", "pytorch", "--smoke-variant", "s050",
               "--deadline-min", "3", "--reserve-s", "20", "--set", "warmup_epochs=0", "mosaic=0.0"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420, check=False)
    assert (tmp_path / "site" / "starnet_probe.py").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert done.returncode == 0, (report, done.stdout[-3000:])
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "run.log", "s050.tar"]

    (variant,) = report["variants"]
    assert variant["epochs"] >= 1 and variant["images_per_second"] > 0, variant
    assert all(len(losses) == variant["epochs"] for losses in variant["losses"].values())  # a row per epoch run
    assert variant["start_sha256"] == json.loads((start / "s050.json").read_text())["sha256"]
    assert report["smoke"][0]["runtime"] == "pytorch" and "error" not in report["smoke"][0]

    unpacked = tmp_path / "returned"
    with tarfile.open(out / "s050.tar") as tar:
        tar.extractall(unpacked, filter="data")
    model, config = load_weights(unpacked / "s050.json")
    budget = config["recipe"][-1]["budget"]
    assert config["int8_scope"] == r"^model\.0\."
    assert variant["epochs"] <= (budget.get("resized") or [budget])[-1]["epochs"]
    assert json.loads((unpacked / "s050.eval.json").read_text())["against"]["weights_sha256"] == variant["start_sha256"]
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(unpacked))
    clear_detectors()
    try:
        detector = get_detector("s050", device="cpu", runtime="pytorch", imgsz=64)
        assert detector.config["sha256"] == config["sha256"]
        detector.detect(cv2.imread(str(REPO / "examples" / "bus.jpg"))[..., ::-1].copy())
    finally:
        clear_detectors()
