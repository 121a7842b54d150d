"""OpenVINO int8: NNCF post-training quantization calibrated on images letterboxed as the detector does it, cached by
weights, recipe and calibration files; a one-line error without calibration images; the default only where committed
benchmark records earned it for the exact weights, and never without calibration images.

Each test makes its own tiny calibration set (four crops of the example photos), so none needs ``../shared``.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from app_support import boxy_weights
from ultralytics.utils import ASSETS

from starnet_demo.inference import int8, runtimes
from starnet_demo.inference.detector import Detector, clear_detectors, get_detector
from starnet_demo.inference.devices import cpu_info
from starnet_demo.inference.exports import export
from starnet_demo.inference.int8 import (
    INT8,
    CalibrationError,
    calibration_blob,
    int8_unavailable_reason,
    int8_verdict,
    record_verdicts,
)
from starnet_demo.inference.preprocess import letterbox
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.models.yolo import build_model

pytestmark = pytest.mark.skipif(int8_unavailable_reason() is not None, reason=str(int8_unavailable_reason()))
IMGSZ = 96


def write_calibration(folder, n: int = 4):
    """``n`` crops of bus.jpg and zidane.jpg, of different shapes (so the letterbox pads them differently)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = cv2.imread(str(ASSETS / ("bus.jpg", "zidane.jpg")[i % 2]))
        h, w = image.shape[:2]
        cv2.imwrite(str(folder / f"calib_{i}.jpg"), image[: h // (1 + i % 2), : w // (1 + i // 2)])
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(boxy_weights(tmp_path / "weights", ("s050",))))
    monkeypatch.setenv("STARNET_CALIBRATION_DIR", str(write_calibration(tmp_path / "calibration")))
    clear_detectors()
    yield tmp_path
    clear_detectors()


def test_calibration_images_are_letterboxed_as_the_detector_does(env):
    path = sorted((env / "calibration").iterdir())[1]
    rgb = np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
    expected = letterbox(rgb, (64, 96)).transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_allclose(calibration_blob(path, (64, 96)), expected, atol=1e-6)


def test_int8_export_is_quantized_cached_and_keyed_by_the_calibration(env):
    torch.manual_seed(0)
    model = build_model("s050").eval()
    first = export(model, "openvino", IMGSZ, "int8")
    info = json.loads((first.parent.parent / "export.json").read_text())
    assert info["int8_recipe"] == INT8.id and len(info["files"]) == 4 and "-int8_" in first.parent.parent.name
    assert "FakeQuantize" in first.read_text()  # activations and weights really quantized
    made = first.stat().st_mtime_ns
    assert export(model, "openvino", IMGSZ, "int8") == first and first.stat().st_mtime_ns == made
    write_calibration(env / "calibration", 5)  # another pool: another export beside it
    assert export(model, "openvino", IMGSZ, "int8").parent.parent != first.parent.parent and first.is_file()


def test_int8_detector_finds_what_fp32_finds(env):
    bus = np.ascontiguousarray(cv2.imread(str(ASSETS / "bus.jpg"))[..., ::-1])
    fp32, _ = Detector(resolve_spec("s050", "cpu", "openvino", 128, "fp32")).detect(bus)
    quantized, timings = Detector(resolve_spec("s050", "cpu", "openvino", 128, "int8")).detect(bus)
    assert len(quantized) and set(quantized.data["class_name"]) == set(fp32.data["class_name"]) == {"person"}
    assert abs(len(quantized) - len(fp32)) <= 2 and timings.inference_ms > 0


def earning_run(sha256: str, flags: list[str]) -> list[dict]:
    """A committed run in which int8 passed the guard and beat both float precisions on a CPU with ``flags``."""
    base = {"variant": "s050", "runtime": "openvino", "imgsz": 640, "weights_sha256": sha256,
            "machine": {"cpu_flags": flags}}
    return [{**base, "precision": "bf16", "inference_ms": 20.0}, {**base, "precision": "fp32", "inference_ms": 35.0},
            {**base, "precision": "int8", "int8_recipe": INT8.id, "inference_ms": 15.0, "accuracy_ok": True}]


def test_without_calibration_images_int8_fails_in_one_line_and_auto_keeps_float(env, monkeypatch):
    (env / "empty").mkdir()
    monkeypatch.setenv("STARNET_CALIBRATION_DIR", str(env / "empty"))
    with pytest.raises(CalibrationError, match="STARNET_CALIBRATION_DIR") as failure:
        Detector(resolve_spec("s050", "cpu", "openvino", IMGSZ, "int8"))
    assert "\n" not in str(failure.value) and str(env) not in str(failure.value)
    sha = json.loads((env / "weights" / "s050.json").read_text())["sha256"]
    assert record_verdicts(env / "weights", [earning_run(sha, cpu_info()["cpu_flags"])]) == {
        "s050": [cpu_info()["cpu_flags"]]}  # the weights' record now says int8 earned it on this CPU
    clear_detectors()
    assert get_detector("s050", "cpu", "openvino", IMGSZ).precision != "int8"  # but it cannot be built here
    monkeypatch.setenv("STARNET_CALIBRATION_DIR", str(env / "calibration"))
    clear_detectors()
    assert resolve_spec("s050", "cpu", "openvino", IMGSZ).precision == "int8"


def test_the_int8_verdict_is_read_from_the_weights_record_only(env, monkeypatch):
    """Another CPU's verdict, other weights' or another recipe's do not count; nothing under docs/bench is read."""
    monkeypatch.setattr(int8, "bench_runs", lambda: pytest.fail("serving must not read benchmark runs"))
    record = env / "weights" / "s050.json"
    sha = json.loads(record.read_text())["sha256"]
    other_cpu = [f for f in ("avx2", "amx_int8") if f not in cpu_info()["cpu_flags"]][:1] or ["no-such-flag"]
    here = cpu_info()["cpu_flags"]
    for runs, leads in (([earning_run(sha, other_cpu)], False), ([earning_run("other", here)], False),
                        ([earning_run(sha, here)], True)):
        record_verdicts(env / "weights", runs)
        clear_detectors()
        assert (resolve_spec("s050", "cpu", "openvino", IMGSZ).precision == "int8") is leads, runs
    config = json.loads(record.read_text())
    config["int8_default"]["recipe"] = "another/300/0/000000"
    record.write_text(json.dumps(config))
    clear_detectors()
    assert resolve_spec("s050", "cpu", "openvino", IMGSZ).precision != "int8"


def test_int8_leads_only_on_records_of_these_weights_and_this_recipe():
    def run(**int8) -> list[dict]:
        base = {"variant": "s1", "runtime": "openvino", "imgsz": 640, "weights_sha256": "abc"}
        int8_record = {**base, "precision": "int8", "int8_recipe": INT8.id, "inference_ms": 15.0, "accuracy_ok": True}
        return [{**base, "precision": "bf16", "inference_ms": 20.0},
                {**base, "precision": "fp32", "inference_ms": 35.0}, {**int8_record, **int8}]

    assert int8_verdict("abc", [run()])
    assert not int8_verdict("other weights", [run()])
    assert not int8_verdict("abc", [run(int8_recipe=INT8.id.rsplit("/", 1)[0] + "/000000")])  # same name, changed
    assert not int8_verdict("abc", [run(accuracy_ok=False)])
    assert not int8_verdict("abc", [run(), run(inference_ms=21.0)])  # slower than bf16 on another run's CPU
    assert not int8_verdict("abc", [[r for r in run() if r["precision"] == "int8"]])  # never timed beside float
    timing_only = run()
    del timing_only[-1]["accuracy_ok"]
    assert not int8_verdict("abc", [timing_only]) and int8_verdict("abc", [timing_only, run()])
    amx, avx512 = {"cpu_flags": ["avx512_bf16", "amx_bf16"]}, {"cpu_flags": ["avx512_bf16"]}
    slower_on_amx = [{**r, "machine": amx} for r in run(inference_ms=21.0)]
    faster_elsewhere = [{**r, "machine": avx512} for r in run()]
    assert int8_verdict("abc", [slower_on_amx, faster_elsewhere], cpu_flags=avx512["cpu_flags"])  # speed: same ISA
    assert not int8_verdict("abc", [slower_on_amx, faster_elsewhere], cpu_flags=amx["cpu_flags"])


def test_the_bench_flags_int8_as_auto_where_its_own_records_earn_it(env, monkeypatch):
    """The markdown's auto ratios are those of what ``auto`` will run once the run is committed."""
    from starnet_demo.tools import bench

    monkeypatch.setattr(int8, "bench_runs", lambda: [])
    monkeypatch.setattr(runtimes, "openvino_cpu_bf16", lambda: True)

    def run(int8_ms: float) -> list[dict]:
        base = {"variant": "s1", "runtime": "openvino", "imgsz": 640, "weights_sha256": "abc", "rewrite": "fold",
                "machine": cpu_info()}  # this machine: the run's speed counts for its own CPU
        return [{**base, "precision": "bf16", "inference_ms": 20.0},
                {**base, "precision": "fp32", "inference_ms": 35.0},
                {**base, "precision": "int8", "int8_recipe": INT8.id, "inference_ms": int8_ms, "accuracy_ok": True}]

    earned, slower = run(15.0), run(25.0)
    bench._mark_auto(earned, "openvino", "cpu")
    bench._mark_auto(slower, "openvino", "cpu")
    assert [r["precision"] for r in earned if r["auto"]] == ["int8"]
    assert [r["precision"] for r in slower if r["auto"]] == ["bf16"]
