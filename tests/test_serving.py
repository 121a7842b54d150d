"""The serving core: a request's model choice resolved once, a bounded pool of models, rect shapes in a few buckets,
and an export cache that is capped and heals what a crash or a hand damaged, also across a restart."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from app_support import BUS, boxy_weights

from starnet_demo.inference import detector, devices, exports
from starnet_demo.inference.detector import POOL, clear_detectors, detector_for, get_detector
from starnet_demo.inference.pool import ModelPool, rss_bytes
from starnet_demo.inference.preprocess import RECT_BUCKETS, rect_bucket
from starnet_demo.inference.runtimes import unavailable_reason
from starnet_demo.inference.settings import SERVED_SIZES, check_settings, served_size
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.weights import files

IMGSZ = 96


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Boxy s050 weights, an empty export cache, the Hub offline, an empty pool."""
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(boxy_weights(tmp_path / "weights", ("s050",))))
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_detectors()
    yield tmp_path
    clear_detectors()


def exported_runtimes() -> list[str]:
    return [r for r in ("onnxruntime", "openvino") if unavailable_reason(r, "cpu") is None]


def image(h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- resolve once
def test_the_weights_are_located_and_hashed_once_per_process(env, monkeypatch):
    """Many requests, other settings and another runtime: the weights file is hashed once, by ``hub.locate``."""
    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: hashed.append(path) or real(path))
    first = resolve_spec("s050", "cpu", "pytorch", IMGSZ)
    for runtime, size in (("pytorch", IMGSZ), ("pytorch", 128), ("auto", IMGSZ), ("pytorch", IMGSZ)):
        get_detector("StarNet-S050", " CPU ", runtime, size).detect(image())
    shipped = [p for p in hashed if p.parent == env / "weights"]  # (an export hashes its own temporary copy)
    assert shipped == [env / "weights" / "s050.safetensors"]
    assert resolve_spec("s050", "cpu", "pytorch", IMGSZ) == first  # one choice, one spec, one pool key
    assert get_detector("s050", "cpu", "pytorch", IMGSZ) is detector_for(first)


def test_one_device_rule(monkeypatch):
    monkeypatch.setattr(devices, "available", lambda: ["cpu", "cuda:0"])
    assert [devices.normalise(d) for d in ("cpu", " CPU", "0", "cuda", "CUDA:0", 0)] == ["cpu", "cpu"] + ["cuda:0"] * 4
    with pytest.raises(ValueError, match="device 'cuda:1' is not available here; choose one of cpu, cuda:0"):
        devices.normalise("cuda:1")


def test_a_gpu_choice_falls_back_to_the_cpu_as_the_same_choice(env, monkeypatch):
    """``ModelSpec.on``: a GPU-only runtime becomes ``auto``'s for the CPU; the variant and threads stay."""
    spec = resolve_spec("s050", "cpu", "pytorch", IMGSZ, threads=1)
    assert spec.on("cpu") == spec
    monkeypatch.setattr(devices, "available", lambda: ["cpu", "cuda:0"])
    assert unavailable_reason("cudagraph", "cpu") is not None
    moved = spec.on("cpu")
    assert (moved.variant, moved.device, moved.threads) == ("s050", "cpu", 1)


# -------------------------------------------------------------------------------------------------- the pool
def test_the_pool_keeps_the_recent_models_within_its_budget():
    mb = 2**20
    pool = ModelPool(budget=lambda: 100 * mb)
    loads = []

    def use(name: str, cost: int = 30):
        owner = None if name.startswith("detector") else f"detector-{name[0]}"
        if owner:
            use(owner)  # a request asks for its detector, then for the shape's backend
        return pool.get(name, lambda: loads.append(name) or name, floor=lambda _: cost * mb, owner=owner)

    use("a-320")
    use("a-640")
    assert pool.stats()["entries"] == 3
    use("detector-b")  # over budget: the least recently used goes (a-320), never the one just loaded
    assert "a-320" not in pool and "a-640" in pool and pool.stats()["bytes"] <= 100 * mb
    use("detector-b")
    assert loads.count("detector-b") == 1  # a hit, not a reload
    use("c-640", 60)  # detector a, used longest ago, goes with the backend it owns
    assert "detector-a" not in pool and "a-640" not in pool and "c-640" in pool
    assert pool.stats()["bytes"] <= 100 * mb


def test_one_load_per_key_however_many_ask():
    pool, loads, gate = ModelPool(budget=lambda: 1 << 30), [], threading.Event()

    def slow():
        gate.wait(5)
        loads.append(1)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(g) for g in got}) == 1 and not pool._loading


def test_a_dropped_detector_and_its_reload_never_run_their_shared_backend_at_once(env):
    """A request still runs a detector the pool dropped, the next one loads it again: both fetch the backend of the
    same (spec, shape) from the pool, so one waits for the other (the soak hit OpenVINO's "Infer Request is busy")."""
    spec = resolve_spec("s050", "cpu", exported_runtimes()[-1], IMGSZ)
    old = detector_for(spec)
    POOL.discard(spec)  # over budget while its request runs
    new = detector_for(spec)
    assert new is not old
    done = threading.Event()
    with old.pytorch():  # the old detector busy
        worker = threading.Thread(target=lambda: new.detect(image()) and done.set())
        worker.start()
        assert not done.wait(1.0)  # the new one waits
    worker.join(60)
    assert done.is_set()


def test_a_specs_lock_lives_as_long_as_its_detectors(env):
    """The detectors of one spec share a lock, and it goes with the last of them: no lock kept per spec ever seen."""
    spec = resolve_spec("s050", "cpu", "pytorch", IMGSZ)
    old = detector_for(spec)
    POOL.discard(spec)
    new = detector_for(spec)
    assert new is not old and new._lock is old._lock and spec in detector._LOCKS
    del old, new
    POOL.discard(spec)
    gc.collect()
    assert spec not in detector._LOCKS


def test_a_stream_of_odd_aspect_ratios_shares_a_few_shapes():
    rng = np.random.default_rng(0)
    for imgsz in (320, 640, 1280):
        shapes = {rect_bucket((int(h), int(w)), imgsz) for h, w in rng.integers(50, 4000, (500, 2))}
        assert len(shapes) <= 2 * len(RECT_BUCKETS) - 1, shapes
        assert all(h % 32 == 0 and w % 32 == 0 and max(h, w) == imgsz for h, w in shapes)
    assert rect_bucket((480, 640), 640) == (480, 640) and rect_bucket((1080, 1920), 640) == (384, 640)


def test_requests_are_served_at_a_few_image_sizes(env):
    """Every valid size snaps to one of the slider's stops, so a request cannot mint a model per stride multiple."""
    assert [served_size(s) for s in (32, 100, 160, 161, 320, 640, 700, 1920)] == [128, 128, 192, 192, 320, 640, 704,
                                                                                   1280]
    assert {served_size(s) for s in range(32, 1921)} == set(SERVED_SIZES) and len(SERVED_SIZES) == 19
    assert check_settings("s050", "cpu", 0.25, 0.45, 150).imgsz == 128
    from starnet_demo.ui import handlers

    result = handlers.detect_image(str(BUS), "s050", "cpu", 0.25, 0.45, 150, runtime="pytorch")[1]
    spec = resolve_spec("s050", "cpu", "pytorch", 640)
    assert result["imgsz"] == 128 and (spec, (128, 128)) in POOL and (spec, (160, 160)) not in POOL


def test_a_compiled_model_is_charged_what_its_first_run_allocates(env):
    """OpenVINO and ONNX Runtime allocate their activations on the first inference: the pool's charge for a new
    shape covers what the request that first used it added to the process, not only the compile."""
    detector = get_detector("s050", "cpu", exported_runtimes()[-1], IMGSZ)
    charged, before = POOL.stats()["bytes"], rss_bytes()
    detector.detect(image(), imgsz=640)
    grew, charged = rss_bytes() - before, POOL.stats()["bytes"] - charged
    assert charged >= 0.9 * grew > 0, (charged / 2**20, grew / 2**20)


def test_detectors_and_shapes_stay_within_the_memory_budget(env, monkeypatch):
    """With room for about two detectors' worth, 12 image sizes and as many odd video frames (24 shapes) stay within
    it: the shapes used longest ago are dropped, and a dropped one loads again when asked for."""
    detector = get_detector("s050", "cpu", "pytorch", IMGSZ)
    monkeypatch.setenv("STARNET_MODEL_MEMORY_MB", str(2 * POOL.stats()["bytes"] / 2**20))
    for size in range(64, 64 + 32 * 12, 32):
        detector.detect(image(), imgsz=size)
        detector.detect(image(size, 3 * size), imgsz=size, rect=True)
        stats = POOL.stats()
        assert stats["bytes"] <= stats["budget_bytes"], stats
    assert stats["entries"] < 24 and (detector.spec, (64, 64)) not in POOL
    detector.detect(image(), imgsz=64)
    assert (detector.spec, (64, 64)) in POOL


# ------------------------------------------------------------------------------------------ the export cache
def entry_of(artefact):
    return artefact.parent if artefact.suffix == ".onnx" else artefact.parent.parent


def cut(path) -> None:
    """Half of a file, as a crash during a copy would leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("runtime", exported_runtimes())
def test_a_cut_cached_export_heals_on_the_next_request(env, runtime):
    detector = get_detector("s050", "cpu", runtime, IMGSZ)
    expected, _ = detector.detect(image())
    [entry] = [p for p in (env / "exports").iterdir() if not p.name.startswith(".")]
    manifest = json.loads((entry / exports.MANIFEST).read_text())["manifest"]
    weights = max(manifest, key=lambda name: manifest[name]["size"])  # the .onnx, or the IR's .bin
    cut(entry / weights)
    assert exports.damage(entry) is not None
    clear_detectors()  # the next request loads the model again
    got, _ = get_detector("s050", "cpu", runtime, IMGSZ).detect(image())
    assert exports.damage(entry) is None and len(got) == len(expected)
    np.testing.assert_allclose(got.xyxy, expected.xyxy, atol=1e-3)


def test_an_export_its_runtime_cannot_load_is_exported_again_once(env, caplog):
    """A file whose manifest was rewritten to match (so only loading it can tell): deleted, exported, loaded."""
    runtime = exported_runtimes()[0]
    get_detector("s050", "cpu", runtime, IMGSZ)
    [entry] = [p for p in (env / "exports").iterdir() if not p.name.startswith(".")]
    model = next(p for p in entry.rglob("*") if p.suffix in (".onnx", ".xml"))
    model.write_bytes(b"not a model")
    info = json.loads((entry / exports.MANIFEST).read_text())
    exports._write_manifest(entry, {k: v for k, v in info.items() if k != "manifest"})
    clear_detectors()
    assert len(get_detector("s050", "cpu", runtime, IMGSZ).detect(np.asarray(image()))[0]) >= 0
    assert "could not load it" in caplog.text and model.read_bytes() != b"not a model"


def test_a_cut_export_heals_across_a_restart(env):
    """A fresh process (as after a crash and restart) finds the cut file at start-up and exports it afresh."""
    runtime = exported_runtimes()[-1]
    get_detector("s050", "cpu", runtime, IMGSZ)
    [entry] = [p for p in (env / "exports").iterdir() if not p.name.startswith(".")]
    cut(max((p for p in entry.rglob("*") if p.suffix in (".onnx", ".bin")), key=lambda p: p.stat().st_size))
    (env / "exports" / f".{entry.name}.999999999.x").mkdir()  # an export a killed process left half-written
    clear_detectors()
    script = ("import sys; from starnet_demo.inference import exports; from starnet_demo.inference.detector import "
              "get_detector; import numpy as np; print(exports.repair()); "
              f"print(len(get_detector('s050', 'cpu', {runtime!r}, {IMGSZ}).detect(np.zeros((64, 64, 3), "
              "np.uint8))[0]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    removed = done.stdout.splitlines()[0]
    assert entry.name in removed and ".999999999." in removed
    assert exports.damage(entry) is None and not [p for p in (env / "exports").iterdir() if p.name.startswith(".")]


def test_the_export_cache_keeps_within_its_cap(env, monkeypatch):
    runtime = exported_runtimes()[0]
    detector = get_detector("s050", "cpu", runtime, 64)
    one = exports.cache_bytes()
    monkeypatch.setenv("STARNET_EXPORT_CACHE_MB", str(2.5 * one / 2**20))
    for size in (96, 128, 160, 192):
        detector.detect(image(), imgsz=size)
    names = sorted(p.name.split("-")[2] for p in (env / "exports").iterdir())
    assert exports.cache_bytes() <= exports.cache_cap_bytes() and len(names) <= 2, names
    assert "192" in names  # the newest stays


def test_the_app_request_path_resolves_the_choice_once(env, monkeypatch):
    """``/detect_image`` resolves its model choice with one ``resolve_spec``; nothing below chooses again."""
    from starnet_demo.inference import spec as spec_mod
    from starnet_demo.ui import handlers

    calls = []
    real = spec_mod.resolve_spec
    monkeypatch.setattr(handlers, "resolve_spec", lambda *a, **k: calls.append(a) or real(*a, **k))
    result = handlers.detect_image(str(BUS), "s050", "cpu", 0.25, 0.45, 128, runtime="pytorch")[1]
    assert len(calls) == 1 and result["variant"] == "s050"
