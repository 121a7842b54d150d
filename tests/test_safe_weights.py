"""The app's weights path end to end: ``app.py`` handlers → detector → ``hub.resolve`` → a Hub stand-in on 127.0.0.1.

The pinned release is pulled and verified; a tampered download is refused with a notice the user sees (``gr.Warning``;
outside a request Gradio turns it into a Python warning) and the app carries on with the local ``weights/``; a pickle
served as weights is never unpickled. ``hub.py`` itself is tested in ``test_hub.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest
import torch
from app_support import BUS, boxy_weights, load_app
from huggingface_hub import constants
from test_hub import flipped, release_files
from test_weights import pickle_that_mkdirs

from starnet_demo.inference.detector import clear_detectors, get_detector
from starnet_demo.models.yolo import build_model
from starnet_demo.ui import handlers
from starnet_demo.weights.files import FORMAT, save_weights

REPO = "test-org/yolov8-starnet"
SETTINGS = ("s1", "cpu", 0.25, 0.45, 160)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The genuine s1 release (random weights that show boxes). Read-only: tests copy it."""
    return boxy_weights(tmp_path_factory.mktemp("release"))


@pytest.fixture
def local(tmp_path, release, monkeypatch):
    """This checkout's ``weights/``: a copy of the release, whose sha256 is the trust anchor."""
    folder = shutil.copytree(release, tmp_path / "weights")
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture
def hub(hub, monkeypatch, tmp_path):
    """conftest's Hub (this release tagged ``v1``, the pin) with a different s1 committed on ``main`` after it, and
    an empty HF cache."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    torch.manual_seed(1)
    newer = save_weights(build_model("s1"), tmp_path / "newer").parent
    hub.commit(REPO, release_files(newer), message="newer, not pinned")
    return hub


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path / "examples-cache"))
    clear_detectors()
    yield load_app()
    clear_detectors()


def detect(app) -> tuple[dict, list[str]]:
    """The detections JSON of one image request and the warnings it showed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = handlers.detect_image(str(BUS), *SETTINGS)[1]
    return result, [str(w.message) for w in caught if "weights" in str(w.message)]


def test_the_app_runs_the_pinned_release_from_the_hub(hub, local, release, app):
    result, shown = detect(app)
    assert result["detections"] and shown == []
    config = get_detector("s1").config
    assert config["source"] == "hub" and config["notice"] is None
    assert config["sha256"] == json.loads((release / "s1.json").read_text())["sha256"]
    assert ("GET", f"/{REPO}/resolve/v1/s1.json") in hub.requests
    assert not [path for _, path in hub.requests if "/resolve/main/" in path]


def test_a_tampered_download_is_refused_and_the_app_falls_back_to_local_weights(hub, local, release, app, caplog):
    genuine = (release / "s1.safetensors").read_bytes()
    hub.tamper(genuine, flipped(genuine))  # same size and advertised sha256, different bytes
    result, shown = detect(app)
    assert result["detections"], "the local weights should still detect"
    [notice] = shown
    assert notice == "S1 weights: the Hub release could not be used; using the weights shipped with the app."
    assert "the Hub copy of s1 (test-org/yolov8-starnet@v1) is refused as corrupt or tampered: sha256 " in caplog.text
    assert str(local) in caplog.text  # the server's log names the path; the user's notice does not
    assert get_detector("s1").config["source"] == "local"
    assert detect(app)[1] == [], "the notice is shown once per loaded model, not on every request"


def test_a_pickle_on_the_hub_is_never_unpickled(hub, app, tmp_path, monkeypatch, caplog):
    """With no local weights to trust, a self-consistent release of a pickle reaches the format check: refused."""
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    marker = tmp_path / "unpickled"
    payload = pickle_that_mkdirs(marker, torch_format=True)
    config = {"format": FORMAT, "variant": "s1", "nc": 80, "names": {}, "file": "s1.safetensors",
              "sha256": hashlib.sha256(payload).hexdigest()}
    hub.commit(REPO, {"s1.safetensors": payload, "s1.json": json.dumps(config).encode()})
    monkeypatch.setenv("STARNET_HUB_REVISION", "main")
    with pytest.raises(app.gr.Error, match="weights are not available on this server"):
        handlers.detect_image(str(BUS), *SETTINGS)
    assert "refused as corrupt or tampered: it is not a safetensors file" in caplog.text  # the reason, in the log
    assert not marker.exists()


def test_an_unreachable_hub_is_a_notice_not_an_error(hub, local, app):
    hub.stop()
    result, [notice] = detect(app)
    assert result["detections"] and "using the weights shipped with the app" in notice
