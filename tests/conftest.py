"""Shared fixtures: a tiny synthetic detection dataset, a real photo, a short clip, a random YOLOv8n teacher, random
weights, one intra-op thread, the app served in this process, a Hub stand-in holding a release.

Everything is made here, in temporary folders, so the suite runs from a clean clone with no ``../shared`` and no
network.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from app_support import CLIP_FRAMES, boxy_weights, serve, write_video  # noqa: E402
from hub_server import HubServer  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics.utils import ASSETS  # noqa: E402

from starnet_demo.inference.preprocess import letterbox, to_tensor  # noqa: E402
from starnet_demo.models.yolo import BASELINE, COCO_NAMES, build_model  # noqa: E402
from starnet_demo.weights.files import save_weights  # noqa: E402

SHAPE_NAMES = {0: "rectangle", 1: "ellipse"}

# Modules whose tests train models, install the package, drive Chromium, serve the app in a process of its own, export
# every runtime or run long clips: all marked ``slow``. A plain ``pytest`` leaves them out (pyproject's ``addopts``),
# for a quick run while developing; CI and the README's test command pass ``-m ""`` and run everything. Slow tests
# in other modules carry ``@pytest.mark.slow`` themselves.
SLOW_MODULES = {"test_appfps", "test_bad_input", "test_browser", "test_bundle", "test_int8", "test_loadtest",
                "test_packaging", "test_runtimes", "test_space", "test_train", "test_video_memory"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def make_shapes_dataset(root: Path, n_images: int = 8, size: int = 160, seed: int = 0) -> Path:
    """Images of coloured rectangles and ellipses on a noisy background, YOLO labels, and a ``data.yaml``.

    ``val`` is the training split itself: the fixture exists to overfit, not to measure generalisation.
    """
    rng = np.random.default_rng(seed)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        img = rng.integers(90, 150, (size, size, 3), dtype=np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if cls == 0:
                cv2.rectangle(img, (x0, y0), (x0 + w - 1, y0 + h - 1), colour, -1)
            else:
                cv2.ellipse(img, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, colour, -1)
            rows.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
        cv2.imwrite(str(images / f"shapes_{i:03d}.png"), img)
        (labels / f"shapes_{i:03d}.txt").write_text("\n".join(rows) + "\n")
    data_yaml = root / "data.yaml"
    # No `path:` key, so ultralytics resolves train/val against this file's folder.
    data_yaml.write_text(yaml.safe_dump({"train": "images/train", "val": "images/train", "nc": len(SHAPE_NAMES),
                                         "names": SHAPE_NAMES}, sort_keys=False))
    return data_yaml


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """``data.yaml`` of 8 synthetic 160 px images (classes ``rectangle``, ``ellipse``); images in ``images/train``."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def coco_shapes_data(shapes_data, tmp_path) -> Path:
    """The shapes images and labels, under the teacher's 80 COCO class names (as the merged training data)."""
    data_yaml = tmp_path / "coco-shapes.yaml"
    train_dir = str(shapes_data.parent / "images" / "train")
    data_yaml.write_text(yaml.safe_dump({"train": train_dir, "val": train_dir, "nc": 80, "names": COCO_NAMES}))
    return data_yaml


@pytest.fixture(scope="session")
def bus_path() -> Path:
    """ultralytics' bundled street photo (810x1080, people and a bus)."""
    return ASSETS / "bus.jpg"


def letterboxed(path: Path, imgsz: int = 256) -> torch.Tensor:
    """A photo as the detector sees it: letterboxed to ``imgsz``, RGB, float in [0, 1], shaped (1, 3, H, W)."""
    return to_tensor(letterbox(cv2.imread(str(path))[..., ::-1], imgsz))


@pytest.fixture(scope="session")
def bus_tensor(bus_path) -> torch.Tensor:
    """bus.jpg letterboxed to 256 px, (1, 3, 256, 256) float in [0, 1]; clone it before changing it."""
    return letterboxed(bus_path, 256)


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """A ``CLIP_FRAMES``-frame 320×240 H.264 clip panning across bus.jpg (``app_support.write_video``)."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=CLIP_FRAMES)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, as ``app.py`` runs each worker: with two on a busy two-core machine every small op waits
    on the other thread (the toy's training steps run 30 times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, one_thread):
    """``app.py`` served in this process on 127.0.0.1 (``app_support.serve``) with ``boxy_weights``, one intra-op
    thread as the app runs: (the app module, its URL). In-process, so tests can watch its threads and files."""
    weights = boxy_weights(tmp_path_factory.mktemp("app-weights"))
    with serve(weights, tmp_path_factory.mktemp("examples-cache")) as (app, url):
        yield app, url


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> Path:
    """A random YOLOv8n (80 classes) fp32 state dict in safetensors, laid out like the real COCO teacher: every
    BatchNorm folded to identity plus bias (weight 1, mean 0, variance 1 - eps)."""
    torch.manual_seed(0)
    teacher = build_model(BASELINE)
    with torch.no_grad():
        for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.fill_(1)
            bn.bias.normal_(0, 0.5)
            bn.running_mean.zero_()
            bn.running_var.fill_(1 - bn.eps)
    path = tmp_path_factory.mktemp("teacher") / "yolov8n-random.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Callable[[Iterable[str]], Path]:
    """``random_weights(["s1", "s2"])`` writes random-init weights (project format) and returns their folder.

    One folder per session; each variant is built once. Point ``STARNET_WEIGHTS_DIR`` at it with ``monkeypatch``.
    """
    folder = tmp_path_factory.mktemp("weights")

    def make(variants: Iterable[str]) -> Path:
        for v in variants:
            if not (folder / f"{v}.json").is_file():
                torch.manual_seed(0)
                save_weights(build_model(v), folder)
        return folder

    return make


HUB_REPO = "test-org/yolov8-starnet"


@pytest.fixture
def hub(monkeypatch, release):
    """A Hub stand-in on 127.0.0.1 (``hub_server.HubServer``) with the requesting module's ``release`` folder
    committed on ``main`` and tagged ``v1``, and the environment pointing the package at it (``HUB_REPO`` pinned at
    ``v1``, online)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        server.commit(HUB_REPO, {p.name: p.read_bytes() for p in sorted(release.iterdir())}, message="release")
        server.tag(HUB_REPO, "v1")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("STARNET_HUB_REPO", HUB_REPO)
        monkeypatch.setenv("STARNET_HUB_REVISION", "v1")
        yield server
