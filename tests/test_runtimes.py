"""Every runtime computes what PyTorch computes and detects what it detects; exports are cached by their settings and
the weights' digest.

Two kinds of evidence. Raw outputs: a seeded random-init s050 (BatchNorms given real statistics) through every
runtime, against the original model in eager PyTorch, output tensor by output tensor. Detections: these need weights
that detect something, which random ones do not (their scores are flat, so classes and NMS order are ties). The tests
use the repo's trained ``weights/s1`` when present, else the COCO-trained YOLOv8n teacher from ``../shared/teachers``
when present, else they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import supervision as sv
import torch
from app_support import with_real_batchnorms
from safetensors.torch import load_file
from ultralytics.data.augment import LetterBox
from ultralytics.utils import ASSETS

from starnet_demo import cli
from starnet_demo.inference import devices, runtimes
from starnet_demo.inference.backends import load_backend
from starnet_demo.inference.detector import Detector, clear_detectors, get_detector
from starnet_demo.inference.exports import export
from starnet_demo.inference.latency import measure
from starnet_demo.inference.precision import precisions
from starnet_demo.inference.runtimes import openvino_cpu_bf16, resolve_runtime, unavailable_reason
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.inference.threads import current_threads, use_threads
from starnet_demo.models.yolo import BASELINE, COCO_NAMES, build_model
from starnet_demo.tools.bench import busy_cores
from starnet_demo.weights.files import EMBEDDED_DIR, save_weights

IMGSZ = 320
CONF = 0.25
IMAGES = ("bus.jpg", "zidane.jpg")
TEACHER = Path(__file__).resolve().parents[2] / "shared" / "teachers" / "yolov8n-coco.safetensors"


def detector_of(*args, **kwargs) -> Detector:
    """A detector of its own, outside the pool."""
    return Detector(resolve_spec(*args, **kwargs))


def rgb(name: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(ASSETS / name))[..., ::-1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """This module's weights folder and export cache (temporary); returns the variant with detecting weights or None.

    The folder holds random s050 weights, plus a copy of ``weights/s1`` or the teacher as ``yolov8n`` if available.
    """
    folder, exports = tmp_path_factory.mktemp("weights"), tmp_path_factory.mktemp("exports")
    save_weights(with_real_batchnorms(), folder)
    trained = None
    if (EMBEDDED_DIR / "s1.json").is_file():
        for suffix in (".json", ".safetensors"):
            shutil.copy(EMBEDDED_DIR / f"s1{suffix}", folder)
        trained = "s1"
    elif TEACHER.is_file():
        teacher = build_model(BASELINE, names=COCO_NAMES)
        teacher.load_state_dict(load_file(str(TEACHER)))
        save_weights(teacher, folder)
        trained = BASELINE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STARNET_WEIGHTS_DIR", str(folder))
        mp.setenv("STARNET_EXPORT_DIR", str(exports))
        yield trained
        clear_detectors()


@pytest.fixture(scope="module")
def trained(env) -> str:
    if env is None:
        pytest.skip("no trained weights: neither weights/s1 nor ../shared/teachers/yolov8n-coco.safetensors")
    return env


def cpu_runtimes(with_ultralytics: bool = True) -> list[tuple[str, str]]:
    out = [("ultralytics", "fp32")] if with_ultralytics else [("pytorch", "fp32")]
    for runtime in ("onnxruntime", "openvino"):
        if unavailable_reason(runtime, "cpu") is None:
            out += [(runtime, p) for p in precisions(runtime, "cpu") if p != "int8"]  # int8: tests/test_int8.py
    return out


@pytest.mark.parametrize("rewrite", ["fold", "fold+merge"])
@pytest.mark.parametrize(("runtime", "precision"), cpu_runtimes(with_ultralytics=False))
def test_raw_outputs_match_eager_pytorch(env, runtime, precision, rewrite):
    """fp32 runtimes agree with eager PyTorch to float rounding; bf16 to a fraction of a pixel on average."""
    model = with_real_batchnorms()
    image = LetterBox((IMGSZ, IMGSZ), auto=False)(image=rgb("bus.jpg"))
    with torch.no_grad():
        reference = model(torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float() / 255)[0]
    backend = load_backend(model, runtime, "cpu", IMGSZ, precision, rewrite)
    out = backend(backend.prepare(image)).float()
    assert out.shape == reference.shape
    box_error = (out[:, :4] - reference[:, :4]).abs()
    if precision == "fp32":
        assert box_error.max() < 1e-2  # pixels
        torch.testing.assert_close(out[:, 4:], reference[:, 4:], rtol=0, atol=1e-5)
    else:
        assert box_error.median() < 0.5 and box_error.max() < 0.02 * IMGSZ
        torch.testing.assert_close(out[:, 4:], reference[:, 4:], rtol=0, atol=1e-3)


def assert_same_detections(a: sv.Detections, b: sv.Detections, floor: float) -> None:
    """Every detection scoring ≥ ``floor`` in one set has a same-class box with IoU ≥ 0.9 in the other.

    The floor sits above the confidence threshold: a box scoring right at the threshold may fall either side of it
    under another runtime's rounding, and that is not a disagreement.
    """
    for one, other in ((a, b), (b, a)):
        for box, cls, conf in zip(one.xyxy, one.class_id, one.confidence, strict=True):
            if conf < floor:
                continue
            same = other.xyxy[other.class_id == cls]
            best = sv.box_iou_batch(box[None], same).max() if len(same) else 0.0
            assert best >= 0.9, f"class {cls} box {box.round(1)} (conf {conf:.2f}) unmatched, best IoU {best:.2f}"


@pytest.fixture(scope="module")
def reference(trained):
    """PyTorch's detections on each example image."""
    detector = detector_of(trained, "cpu", "pytorch", IMGSZ)
    return {name: detector.detect(rgb(name), conf=CONF)[0] for name in IMAGES}


def test_reference_finds_the_people_on_the_bus_photo(reference):
    people = reference["bus.jpg"][reference["bus.jpg"].data["class_name"] == "person"]
    assert len(people) >= 2 and people.confidence.max() > 0.5, reference["bus.jpg"]


@pytest.mark.parametrize(("runtime", "precision"), cpu_runtimes())
def test_runtime_detections_match_pytorch(trained, reference, runtime, precision):
    detector = detector_of(trained, "cpu", runtime, IMGSZ, precision)
    assert (detector.runtime, detector.precision) == (runtime, precision)
    for name in IMAGES:
        detections, timings = detector.detect(rgb(name), conf=CONF)
        assert_same_detections(detections, reference[name], floor=CONF + 0.1)
        assert set(detections.data["class_name"]) <= set(detector.names.values())
        assert min(timings.preprocess_ms, timings.inference_ms, timings.postprocess_ms) >= 0


def test_pytorch_rewrite_levels_agree(trained, reference):
    for rewrite in ("none", "fold"):
        detector = detector_of(trained, "cpu", "pytorch", IMGSZ, rewrite=rewrite)
        detections, _ = detector.detect(rgb("bus.jpg"), conf=CONF)
        assert_same_detections(detections, reference["bus.jpg"], floor=CONF + 0.05)


def test_class_filter_and_rect_mode(trained, reference):
    detector = get_detector(trained, "cpu", "pytorch", IMGSZ)
    wanted = int(reference["bus.jpg"].class_id[0])
    only, _ = detector.detect(rgb("bus.jpg"), conf=CONF, classes=[wanted])
    square = reference["bus.jpg"]
    assert len(only) and set(only.class_id) == {wanted}
    assert_same_detections(only, square[square.class_id == wanted], floor=CONF)  # that class's boxes, all of them
    rect, _ = detector.detect(rgb("bus.jpg"), conf=CONF, rect=True)  # 320x256 input instead of 320x320
    assert_same_detections(rect, square, floor=CONF + 0.1)  # the same objects, mapped back to the photo's pixels


def test_auto_and_explicit_names_share_one_detector_that_runs_what_it_says(env):
    """``auto`` resolves to one spec with its explicit name; the backend built for it is that runtime, computing in
    that precision (OpenVINO's compiled model reports its inference precision itself)."""
    detector = get_detector("s050", "cpu", "auto", IMGSZ)
    assert detector is get_detector("s050", "cpu", detector.runtime, IMGSZ, detector.precision)
    backend = detector._backend((IMGSZ, IMGSZ))
    assert type(backend).__name__ == {"openvino": "OpenVINOBackend", "onnxruntime": "OnnxRuntimeBackend"}[
        detector.runtime]
    if detector.runtime == "openvino":
        import openvino as ov

        hint = backend.compiled.get_property("INFERENCE_PRECISION_HINT")
        assert hint == {"bf16": ov.Type.bf16, "fp32": ov.Type.f32}[detector.precision]
        assert detector.precision == ("bf16" if openvino_cpu_bf16() else "fp32")


def test_every_shipped_weights_file_passed_the_bf16_guard():
    """OpenVINO's bf16 default rests on the committed CPU benchmarks: each weights/ file, by its sha256, lost at most
    0.5 points of mAP50-95 in one against fp32. New weights without a rerun (``bench --precisions all --accuracy``)
    fail here."""
    runs = sorted((Path(__file__).resolve().parents[1] / "docs" / "bench").glob("cpu*.json"))
    records = [r for run in runs for r in json.loads(run.read_text())]
    for path in sorted(EMBEDDED_DIR.glob("*.json")):
        config = json.loads(path.read_text())
        guard = [r for r in records if r["runtime"] == "openvino" and r["precision"] == "bf16"
                 and r.get("weights_sha256") == config["sha256"]]
        assert guard, f"{path.name}: no OpenVINO bf16 accuracy record for sha256 {config['sha256'][:12]}"
        assert all(r["accuracy_ok"] and r["map50_95_delta"] >= -0.005 for r in guard), guard


def test_auto_without_native_bf16_prefers_onnxruntime(monkeypatch):
    """Without native bf16 OpenVINO runs fp32, which loses to ONNX Runtime on a shared CPU (``runtimes.AUTO_ORDER``)."""
    monkeypatch.setattr(runtimes, "openvino_cpu_bf16", lambda: False)
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    assert precisions("openvino", "cpu")[0] == "fp32" and "bf16" not in precisions("openvino", "cpu")


def test_bad_settings_are_refused(env):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_runtime("cudagraph", "cpu")
    with pytest.raises(ValueError, match="unknown runtime"):
        detector_of("s050", "cpu", "tensorrt", IMGSZ)
    with pytest.raises(ValueError, match="supports precision"):
        detector_of("s050", "cpu", "pytorch", IMGSZ, precision="fp16")
    with pytest.raises(ValueError, match="image size"):
        detector_of("s050", "cpu", "pytorch", 0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:0' is not available here; choose one of cpu"):
            detector_of("s050", "cuda:0", "pytorch", IMGSZ)
    with pytest.raises(ValueError, match="RGB uint8"):
        get_detector("s050", "cpu", "pytorch", IMGSZ).detect(np.zeros((8, 8), np.uint8))


def test_export_cache_is_keyed_by_the_weights(env, tmp_path, monkeypatch):
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("s050").eval()
    messages = []
    first = export(model, "onnxruntime", 64, progress=lambda f, desc: messages.append(desc))
    assert first.is_file() and any("exporting" in m for m in messages)
    made = first.stat().st_mtime_ns
    messages.clear()
    assert export(model, "onnxruntime", 64, progress=lambda f, desc: messages.append(desc)) == first
    assert first.stat().st_mtime_ns == made and any("cached" in m for m in messages)
    assert json.loads((first.parent / "export.json").read_text())["imgsz"] == [64, 64]

    with torch.no_grad():
        model.model[-1].cv2[0][-1].bias += 0.5  # new weights: a new export, and the stale one is gone
    second = export(model, "onnxruntime", 64)
    assert second != first and second.is_file() and not first.parent.exists()
    other_size = export(model, "onnxruntime", 96)
    assert other_size.parent != second.parent and second.is_file()
    assert sorted(os.listdir(tmp_path)) == sorted([second.parent.name, other_size.parent.name])


def test_measure_reports_every_stage(env):
    record = measure(get_detector("s050", "cpu", "pytorch", IMGSZ), rgb("bus.jpg"), runs=3, warmup=1)
    for stage in ("preprocess", "inference", "postprocess", "total"):
        assert 0 <= record[f"{stage}_ms"] <= record[f"{stage}_ms_p90"]
    assert record["e2e_ms_median"] >= record["inference_ms"] and record["fps"] > 0
    assert record["params"] > 1e6 and record["gflops"] > 0 and record["peak_memory_mb"] > 0
    assert (record["variant"], record["runtime"], record["precision"], record["runs"]) == ("s050", "pytorch", "fp32", 3)


def test_bench_cli_writes_records_and_markdown(env, tmp_path, capsys):
    """Every runtime, ultralytics' predict included, on the threads asked for (every core: ultralytics' own choice
    would be one fewer), each record saying so, with its GFLOP/s against the CPU's measured matmul peak."""
    out, cores, before = tmp_path / "bench.json", os.cpu_count(), torch.get_num_threads()
    rc = cli.main(["bench", "--variants", "s050", "--runtimes", "pytorch,ultralytics", "--imgsz", "128",
                   "--runs", "2", "--warmup", "1", "--threads", str(cores), "--video", "none", "--out", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    assert {(r["variant"], r["runtime"]) for r in records} == {(v, r) for v in (BASELINE, "s050")
                                                                for r in ("pytorch", "ultralytics")}
    keys = {"variant", "runtime", "device", "precision", "preprocess_ms", "inference_ms", "postprocess_ms",
            "e2e_ms_median", "e2e_ms_p90", "fps", "peak_memory_mb", "machine", "threads", "warmup", "gflops_per_s"}
    assert all(keys <= r.keys() for r in records)
    assert {(r["threads"], r["threads_used"], r["warmup"]) for r in records} == {(cores, cores, 1)}
    machine = records[0]["machine"]
    assert machine["cpu"] and isinstance(machine["cpu_flags"], list) and machine["peak_gflops"]["fp32"] > 0
    for r in records:
        assert r["gflops_per_s"] == pytest.approx(r["gflops"] / r["inference_ms"] * 1000, rel=0.01, abs=0.1), r
        peak = machine["peak_gflops"]["fp32"]
        assert r["peak_share"] == pytest.approx(r["gflops_per_s"] / peak, rel=0.05, abs=1e-4), r
    markdown = out.with_suffix(".md").read_text()
    assert "| variant | runtime |" in markdown and f"{cores} thread" in markdown
    assert f"Ratios of this run only, on {machine['cpu']}" in markdown
    assert "end-to-end per image" not in capsys.readouterr().out  # no auto runtime measured, so no such ratio
    assert torch.get_num_threads() == before  # the bench gave the process its threads back


def test_use_threads_sets_every_runtime(env):
    """ONNX Runtime and OpenVINO backends of a spec resolved inside ``use_threads`` compute on that many threads, as
    PyTorch; another thread meanwhile still sees no count of its own (the runtimes' choice)."""
    before, seen = torch.get_num_threads(), []
    with use_threads(1):
        assert torch.get_num_threads() == 1
        other = threading.Thread(target=lambda: seen.append(current_threads()))
        other.start()
        other.join()
        for runtime in ("onnxruntime", "openvino"):
            if unavailable_reason(runtime, "cpu") is None:
                spec = resolve_spec("s050", "cpu", runtime, 64)
                assert spec.threads == 1 and detector_of("s050", "cpu", runtime, 64)._backend((64, 64)).threads == 1
    assert seen == [None] and current_threads() is None and torch.get_num_threads() == before


def test_cpu_label_counts_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert devices.label("cpu") == "CPU (1 thread)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert devices.label("cpu") == "CPU (2 threads)"


def test_busy_cores_compete_while_timing_and_are_gone_after(env, tmp_path):
    """``--busy 1``: a spinning process shares the CPU during the timed runs (the bench's process gets less of it),
    the records and the markdown say so, and no spinner outlives the bench."""
    def children() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)}

    before = children()
    with busy_cores(1):
        spinners = [psutil.Process(pid) for pid in children() - before]
        assert len(spinners) == 1
        spinners[0].cpu_percent()
        time.sleep(0.5)
        assert spinners[0].cpu_percent() > 50  # it really spins
    assert children() == before
    out = tmp_path / "busy.json"
    assert cli.main(["bench", "--variants", "s050", "--runtimes", "pytorch", "--imgsz", "64", "--runs", "1",
                     "--warmup", "0", "--video", "none", "--busy", "1", "--out", str(out)]) == 0
    assert {r["machine"]["busy_processes"] for r in json.loads(out.read_text())} == {1}
    assert "1 busy-loop processes competing" in out.with_suffix(".md").read_text()
    assert children() == before


def test_bench_cli_fails_in_one_line(env, capsys):
    assert cli.main(["bench", "--variants", "s050", "--runtimes", "nope", "--video", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown runtime" in err[0]
